"""Quick modes of the real-CoNSeP benchmarks (``benchmarks/ablation.py``, ``benchmarks/fidelity.py``).

They read ``../shared/data/consep_256`` (CoNSeP, Graham et al. 2019, research use), which a fresh
clone does not have: the tests skip with that reason there. The committed SDM
``benchmarks/weights/sdm_consep_cpu.safetensors`` renders the pools.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
CONSEP = ROOT.parent / "shared" / "data" / "consep_256"
pytestmark = pytest.mark.skipif(not (CONSEP / "train" / "Labels").is_dir(),
                                reason=f"real CoNSeP patches not found at {CONSEP} (../shared/data/consep_256 is "
                                       "not part of a fresh clone)")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("consep_cache")


def _ablation(out: Path, cache: Path, *extra: str) -> int:
    from benchmarks.ablation import main

    return main(["--dataset", "consep", "--data-root", str(CONSEP), "--quick", "--out", str(out),
                 "--pool-dir", str(cache / "pools"), "--work-dir", str(cache / "work"), *extra])


# quick mode on 2 quiet cores: about 25 s of CPU (pool, 14 tiny runs, the bootstrap)
def test_ablation_quick_runs_the_design(tmp_path, cache):
    from benchmarks.arm_streams import ARMS
    from benchmarks.render_results import ablation_markdown

    out = tmp_path / "ablation"
    page = tmp_path / "results.md"
    assert _ablation(out, cache, "--results-page", str(page)) == 0
    r = json.loads((out / "ablation.json").read_text())
    assert r["arms"] == list(ARMS) and r["seeds"] == [0, 1] and r["design"]["pool_draws"] == 2
    # the synthetic arms' items came from DiffMixDataset, every asked item served from the pool
    for arm in ("gradmix", "diffmix-b", "diffmix-e", "diffmix-union", "diffmix-composed"):
        assert r["design"]["items_source"][arm].startswith("DiffMixDataset(base, None")
        for ex in r["exposure"][arm]:
            ds = ex["dataset"]
            assert ds["synthetic_served"] == ds["synthetic_asked"] == ex["asked_items"] > 0
            assert ds["epochs"] and all("served_share" in e for e in ds["epochs"])
    # GradMix and DiffMix-B replay the same balancing maps at the same slots (the renderer is the difference)
    for g, b in zip(r["exposure"]["gradmix"], r["exposure"]["diffmix-b"]):
        assert g["rare_instances_items"] == b["rare_instances_items"]
    assert r["design"]["rare_crop"]["ratio"] >= 0 and "m_rare_crop" in r["design"]["rare_crop"]
    # the design's numbers: primary endpoint with hierarchical intervals, paired differences, resolvable size
    a = r["analysis"]
    assert a["n_tiles"] == 2 and a["seeds"] == [0, 1]
    for arm in ARMS:
        m = a["arms"][arm]["metrics"]["rare_ap"]
        assert len(m["per_seed"]) == 2 and len(m["ci95"]) == 2
        if arm != "baseline":
            assert set(a["arms"][arm]["vs_baseline"]["rare_ap"]) >= {"mean", "ci95", "se", "seeds_better"}
    assert "rare_ap" in a["resolvable"] and r["gate"]["passed"]
    # balancing on whole tiles, its report, and the sampler settings the Synthesizer reported
    p = r["pool"]
    assert len(p["per_draw"]) == 2 and p["per_draw"][0]["balancing"]["pastes"] > 0
    assert set(p["per_draw"][0]["rare_share"]) >= {"real", "sdm_balance", "sdm_enlarge", "sdm_composed"}
    assert r["sampler"]["entry_timestep"] is not None and r["sampler"]["timesteps"]
    # everything rendered from the JSON
    assert (out / "ablation.md").read_text() == ablation_markdown(r)
    assert "Smallest difference the design resolves" in page.read_text()
    assert (out / "rare_ap.png").is_file() and (out / "f1_per_type.png").is_file()


def test_ablation_refuses_leaky_validation_and_stops_at_the_gate(tmp_path, cache):
    with pytest.raises(SystemExit, match="in the SDM's training set|leaks"):
        _ablation(tmp_path / "a", cache, "--val-tiles", "19")
    out = tmp_path / "gate"
    with pytest.raises(SystemExit, match="does not learn the rare class"):
        _ablation(out, cache, "--min-auroc", "0.99", "--arms", "baseline,diffmix-e")
    gate = json.loads((out / "gate_failed.json").read_text())
    assert not gate["passed"] and len(gate["per_seed"]) == 2
    assert not (out / "ablation.json").exists()


def test_ablation_test_root_trains_on_every_tile(tmp_path, cache):
    """--test-root: all 27 tiles train, the folder (here: two training windows as whole images) is scored."""
    test_root = tmp_path / "Test"
    for sub, ext in (("Images", ".jpg"), ("Labels", ".mat")):
        (test_root / sub).mkdir(parents=True)
        for name in ("train_7_005", "train_19_010"):
            shutil.copy(CONSEP / "train" / sub / f"{name}{ext}", test_root / sub)
    out = tmp_path / "ablation"
    assert _ablation(out, cache, "--test-root", str(test_root), "--arms", "baseline", "--train-tiles", "all",
                     "--eval-crop", "0") == 0
    r = json.loads((out / "ablation.json").read_text())
    assert r["train"]["n_tiles"] == 27 and r["train"]["n_patches"] == 432
    assert r["eval"]["n_tiles"] == 2 and r["eval"]["name"] == "test"
    assert "merge 7->4: False" in r["split"]["eval"]  # consep_256 is merged already: auto keeps it


# quick mode on 2 quiet cores: about 12 s of CPU
def test_fidelity_quick(tmp_path):
    from benchmarks.fidelity import main
    from benchmarks.render_results import fidelity_markdown

    out = tmp_path / "fidelity"
    assert main(["--data-root", str(CONSEP), "--quick", "--out", str(out)]) == 0
    r = json.loads((out / "fidelity.json").read_text())
    lf = r["label_fidelity"]
    for key in ("real", "sdm_enlarge", "null_enlarge", "sdm_balance", "gradmix_balance", "null_balance",
                "swap_vs_B", "swap_vs_A"):
        assert 0.0 <= lf[key]["pq"][0] <= 1.0
    assert lf["real"]["pq_ratio"][0] in (1.0, 0.0) or np.isnan(lf["real"]["pq_ratio"][0])
    tf = r["type_fidelity"]
    assert {"real_val", "sdm_pasted", "gradmix_pasted", "null_pasted"} <= set(tf) and "mask_only" in tf
    assert set(r["realism"]) == {"sdm", "gradmix", "negative_control_real_vs_real", "positive_control_blur"}
    mo = r["morphology"]
    assert mo["features"] == ["area", "eccentricity", "haematoxylin"] and "sdm_enlarge" in mo["w1"]
    assert r["sampler"]["entry_timestep"] is not None
    assert (out / "fidelity.md").read_text() == fidelity_markdown(r)
    for png in ("fidelity.png", "morphology.png", "fidelity_examples.png"):
        assert (out / png).is_file()
    # the sampler comparison: a run against itself is within its own spread; a shifted figure is not
    from benchmarks.fidelity_compare import compare, markdown
    from benchmarks.fidelity_compare import main as compare_main
    from benchmarks.render_results import fidelity_summary

    assert "PQ / PQ on real" in fidelity_summary(r)
    same = compare(r, r)
    assert all(row["delta"] in (0.0, None) for row in same["rows"]) and same["within"] == same["judged"]
    shifted = json.loads(json.dumps(r))
    for s in shifted["per_seed"]["label_fidelity"]:  # the comparison reads the per-seed values
        s["sdm_enlarge"]["pq"] += 10 * r["label_fidelity"]["sdm_enlarge"]["pq"][1] + 0.1
    row = next(x for x in compare(shifted, r)["rows"] if x["figure"] == "label: SDM(enlarged map), PQ")
    assert row["within_reference_sd"] is False and row["delta"] > 0.1 - 1e-9
    other = {**r, "validation_windows": r["validation_windows"] + 1}
    with pytest.raises(ValueError, match="validation_windows"):
        compare(other, r)
    assert compare_main(["--candidate", str(out / "fidelity.json"), "--reference", str(out / "fidelity.json"),
                         "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp.md").read_text() == markdown(json.loads((tmp_path / "cmp.json").read_text()))
    # several runs per side (--render-seed): the spread pools render and judge seeds, pairs by render seed
    assert r["render_seed"] == 0
    r1 = json.loads(json.dumps(r))
    r1["render_seed"] = 1
    for s in r1["per_seed"]["label_fidelity"]:
        s["sdm_enlarge"]["pq"] += 0.2
    multi = compare([r, r1], [r, r1])
    row = next(x for x in multi["rows"] if x["figure"] == "label: SDM(enlarged map), PQ")
    assert multi["paired_by"] == "render_seed" and multi["paired_render_seeds"] == [0, 1]
    assert row["delta"] == pytest.approx(0.0) and row["delta_per_seed"] == [pytest.approx(0.0)] * 2
    assert row["reference_render_seed_sd"] == pytest.approx(0.2 / np.sqrt(2))
    assert row["reference"][1] >= 0.1 and row["within_reference_sd"] is True
    # a candidate shifted by less than the render-seed spread is within it; the judge-only spread would not be
    lifted = json.loads(json.dumps(r))
    for s in lifted["per_seed"]["label_fidelity"]:
        s["sdm_enlarge"]["pq"] += 0.05
    row = next(x for x in compare([lifted], [r, r1])["rows"] if x["figure"] == "label: SDM(enlarged map), PQ")
    assert row["within_reference_sd"] is True and row["delta_per_seed"] == [pytest.approx(0.05)]
    with pytest.raises(ValueError, match="render seeds"):
        compare([r, r], [r])
    other_sampler = {**r1, "sampler": {**r1["sampler"], "denoising_steps": 99}}
    with pytest.raises(ValueError, match="different samplers"):
        compare([r], [r, other_sampler])
    (tmp_path / "r1.json").write_text(json.dumps(r1))
    assert compare_main(["--candidate", str(out / "fidelity.json"), str(tmp_path / "r1.json"), "--reference",
                         str(out / "fidelity.json"), str(tmp_path / "r1.json"), "--out", str(tmp_path / "cmp2")]) == 0
    text = (tmp_path / "cmp2.md").read_text()
    assert text == markdown(json.loads((tmp_path / "cmp2.json").read_text())) and "sd over render seeds" in text


def test_tile_counts_match_classification_stats():
    """Per-image counts of the whole-tile evaluation sum to HoVer-Net's pooled classification stats."""
    from benchmarks.downstream.evaluate import counts_from_points
    from diffmix_aug.metrics import classification_stats

    rng = np.random.default_rng(0)
    true, pred = [], []
    for _ in range(6):
        n, m = rng.integers(0, 12), rng.integers(0, 12)
        true.append({"inst_centroid": rng.uniform(0, 64, (n, 2)), "inst_type": rng.integers(1, 5, n)})
        pred.append({"inst_centroid": rng.uniform(0, 64, (m, 2)), "inst_type": rng.integers(1, 5, m)})
    counts = sum(counts_from_points(t["inst_centroid"], t["inst_type"], p["inst_centroid"], p["inst_type"],
                                    [1, 2, 3, 4], 6.0) for t, p in zip(true, pred))
    ref = classification_stats(true, pred, radius=6.0, type_ids=[1, 2, 3, 4])
    assert tuple(counts[:3]) == (ref["tp"], ref["fp"], ref["fn"])
    for k, c in enumerate([1, 2, 3, 4]):
        tp, fp, fn, fpd, fnd = counts[3 + 5 * k: 8 + 5 * k]
        den = 2 * tp + 2 * fp + 2 * fn + fpd + fnd
        assert (2 * tp / den if den else 1.0) == pytest.approx(ref["f1_per_type"][c])


def test_reassembled_tiles_match_the_patches():
    """consep_256's windows put back into 1000 px tiles (then 20x) give back every window exactly."""
    from benchmarks.tilesets import consep_tilesets
    from diffmix_aug.data.dataset import NucleiDataset

    train, val = consep_tilesets(CONSEP, [1], only_tiles=[7])
    patches = NucleiDataset.from_consep_dir(CONSEP / "train", merge=False)
    names = patches.item_names()
    for ts in (train, val):
        assert len(ts.tiles) == 1 and ts.tiles[0].inst_map.shape == (500, 500) and len(ts.patches) == 16
        for j, name in enumerate(ts.patches.item_names()):
            ref = patches.subset([names.index(name)]).downsampled(2)[0]
            got = ts.patches[j]
            np.testing.assert_array_equal(got.inst_map, ref.inst_map)
            np.testing.assert_array_equal(got.type_map, ref.type_map)
