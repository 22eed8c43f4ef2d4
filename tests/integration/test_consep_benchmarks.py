"""Quick modes of the real-CoNSeP benchmarks (``benchmarks/ablation.py --dataset consep``, ``benchmarks/fidelity.py``).

They read ``../shared/data/consep_256`` (CoNSeP, Graham et al. 2019, research use), which a fresh
clone does not have: the tests skip with that reason there. The committed SDM
``benchmarks/weights/sdm_consep_cpu.safetensors`` renders the pools.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
CONSEP = ROOT.parent / "shared" / "data" / "consep_256"
pytestmark = pytest.mark.skipif(not (CONSEP / "train" / "Labels").is_dir(),
                                reason=f"real CoNSeP patches not found at {CONSEP} (../shared/data/consep_256 is "
                                       "not part of a fresh clone)")


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("pools")


# quick mode: 18 s (ablation), 17 s (fidelity), 4 s (--test-root) on 2 quiet cores
def test_ablation_quick_on_consep(tmp_path, pool_dir):
    from benchmarks.ablation import DEFAULT_ARMS, main

    out = tmp_path / "ablation"
    assert main(["--dataset", "consep", "--data-root", str(CONSEP), "--quick", "--out", str(out),
                 "--pool-dir", str(pool_dir), "--n-test", "4", "--iterations", "4"]) == 0
    result = json.loads((out / "ablation.json").read_text())
    assert set(result["eval"]) == {"val", "val_sdm_unseen"}
    assert set(result["eval"]["val"]["summary"]) == set(DEFAULT_ARMS)
    assert result["n_train"] == 21 * 16  # tiles 1-5 and 19 held out whole
    assert result["pool"]["source_bias"].startswith("none")
    exposure = {arm: reps[0] for arm, reps in result["exposure"].items()}
    assert exposure["gradmix"]["rare_instances"] == exposure["diffmix-b"]["rare_instances"]
    assert exposure["diffmix-e"]["rare_instances_synthetic"] <= exposure["diffmix-b"]["rare_instances_synthetic"]
    assert result["weighted_loss_weights"][1] > result["weighted_loss_weights"][3]  # misc rarer than epithelial
    assert (out / "f1_per_type.png").is_file()


# quick mode: 18 s (ablation), 17 s (fidelity), 4 s (--test-root) on 2 quiet cores
def test_ablation_test_root_trains_on_every_tile(tmp_path, pool_dir):
    """--test-root: all 27 tiles train, the folder (here: a copy of two training patches) is scored."""
    import shutil

    from benchmarks.ablation import main

    test_root = tmp_path / "Test"
    for sub, ext in (("Images", ".jpg"), ("Labels", ".mat")):
        (test_root / sub).mkdir(parents=True)
        for name in ("train_7_005", "train_19_010"):
            shutil.copy(CONSEP / "train" / sub / f"{name}{ext}", test_root / sub)
    out = tmp_path / "ablation"
    assert main(["--dataset", "consep", "--data-root", str(CONSEP), "--test-root", str(test_root), "--quick",
                 "--arms", "baseline,weighted-loss", "--out", str(out), "--pool-dir", str(pool_dir),
                 "--iterations", "2"]) == 0
    result = json.loads((out / "ablation.json").read_text())
    assert result["n_train"] == 432 and set(result["eval"]) == {"test"}
    assert result["eval"]["test"]["n_images"] == 2
    assert "merge 7->4: False" in result["split"]["eval"]  # consep_256 is merged already: auto keeps it


# quick mode: 18 s (ablation), 17 s (fidelity), 4 s (--test-root) on 2 quiet cores
def test_fidelity_quick(tmp_path, pool_dir):
    from benchmarks.fidelity import main

    out = tmp_path / "fidelity"
    assert main(["--data-root", str(CONSEP), "--quick", "--out", str(out), "--pool-dir", str(pool_dir)]) == 0
    result = json.loads((out / "fidelity.json").read_text())
    lf = result["label_fidelity"]
    for key in ("real", "sdm_enlarge", "sdm_balance", "gradmix_balance", "swap_vs_B", "swap_vs_A"):
        assert 0.0 <= lf[key]["pq"][0] <= 1.0
    auc = result["realism"]["c2st_auc_sdm"][0]
    assert 0.0 <= auc <= 1.0
    assert result["type_fidelity"]["real_val"]["1"]["n"] == 49  # tiles 1-5 hold 49 miscellaneous nuclei
    assert set(result["stain_w1"]) == {"real_train_vs_real_val", "sdm_vs_real_val", "gradmix_vs_real_val"}
    assert (out / "fidelity.md").read_text().count("|") > 20 and (out / "fidelity.png").is_file()


def test_auc_and_type_counts_match_references():
    """The rank AUC matches the pairwise definition; per-image counts sum to classification_stats."""
    from benchmarks.ablation import f1_from_counts, type_counts
    from benchmarks.fidelity import auc
    from diffmix_aug.metrics import classification_stats

    rng = np.random.default_rng(0)
    neg, pos = rng.normal(0, 1, 40), rng.normal(0.7, 1, 30)
    pairwise = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert auc(neg, pos) == pytest.approx(pairwise)
    true, pred = [], []
    for _ in range(6):
        n, m = rng.integers(0, 12), rng.integers(0, 12)
        true.append({"inst_centroid": rng.uniform(0, 64, (n, 2)), "inst_type": rng.integers(1, 5, n)})
        pred.append({"inst_centroid": rng.uniform(0, 64, (m, 2)), "inst_type": rng.integers(1, 5, m)})
    counts = type_counts(true, pred, [1, 2, 3, 4]).sum(0)
    ref = classification_stats(true, pred, type_ids=[1, 2, 3, 4])
    assert tuple(counts[:3]) == (ref["tp"], ref["fp"], ref["fn"])
    for k, c in enumerate([1, 2, 3, 4]):
        assert f1_from_counts(counts, k) == pytest.approx(ref["f1_per_type"][c])
