"""``diffmix-aug synthesize``: shipped config, the patch store it writes (manifest, sidecars, shards
under torchrun), refusals (untrained weights, typos, non-empty --out, --resume from another
configuration), --resume / --overwrite, and counts of what this run wrote."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from diffmix_aug.cli import main

ROOT = Path(__file__).resolve().parents[2]
TOY_CKPT = ROOT / "diffmix_aug" / "weights" / "sdm_tiny_toy.safetensors"

FAST = f"model: {{checkpoint: {TOY_CKPT.as_posix()}, device: cpu, sampler: {{steps: 2, t_start: 250}}}}\n"
DATA = "data: {kind: toy, toy: {n: 6, size: 64, seed: 0}}\n"


def _cfg(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def _run(cfg: Path, out: Path, *extra: str) -> int:
    return main(["synthesize", "--config", str(cfg), "--out", str(out), "--no-progress", *extra])


def test_shipped_toy_config_runs_from_the_shipped_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the config's checkpoint path is relative to the repository
    out = tmp_path / "out"
    assert _run(ROOT / "diffmix_aug" / "configs" / "synthesize_toy.yaml", out, "--num", "2") == 0
    assert "wrote 2 new patches" in capsys.readouterr().out
    files = sorted(out.glob("diffmix_r0_*.npy"))
    assert [f.stem for f in files] == ["diffmix_r0_00000000_000", "diffmix_r0_00000000_001"]
    a = np.load(files[0])
    assert a.shape == (64, 64, 5) and a.dtype == np.int32
    meta = json.loads(files[0].with_suffix(".json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert meta["mode"] == "union" and meta["map_kind"] in ("balance", "enlarge") and "params" in meta
    settings = meta["sampler"]["settings"]
    assert settings["preset"] == "fast" and settings["solver"] == "unipc" and settings["steps"] == 10
    assert settings["t_start"] == 540 and len(meta["checkpoint_sha256"]) == 64
    assert manifest["mode"] == "union" and manifest["patch_shape"] == [64, 64]
    assert manifest["classes"]["num_classes"] == 5 and manifest["classes"]["rare_classes"] == [1]
    assert manifest["checkpoint"]["sha256"] == meta["checkpoint_sha256"]
    assert manifest["sampler"] == meta["sampler"] and manifest["created_by"] == "diffmix-aug synthesize"


def test_untrained_weights_are_refused(tmp_path, capsys):
    cfg = _cfg(tmp_path, DATA + "model: {preset: tiny, image_size: 64}\n")
    assert _run(cfg, tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "random weights" in err and "--allow-untrained" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize("text, match", [
    (DATA + "model: {chekpoint: x.safetensors}\n", r"unknown key\(s\) \['chekpoint'\] in config section `model`"),
    (DATA + FAST + "synthesize: {num_patchs: 4}\n", r"\['num_patchs'\] in config section `synthesize`"),
    ("data: {kind: toy, toy: {num: 16}}\n" + FAST, r"\['num'\] in config section `toy`"),
    ("data: {kind: toy, sise: 3}\n" + FAST, r"\['sise'\] in config section `data`"),
    (DATA + FAST.replace("t_start: 250", "t_strat: 250"), r"\['t_strat'\] in config section `model.sampler`"),
    (DATA + FAST.replace("t_start: 250", "strength: 0.5"), r"`model.sampler.strength` was removed: .*t_start"),
    (DATA + FAST + "diffmix: {mood: union}\n", r"\['mood'\] in config section `diffmix`"),
    (DATA + FAST + "diffmix: {mode: both}\n", r"'both' was removed.*'union'.*'composed'"),
    (DATA + FAST + "synthesis: {}\n", r"unknown top-level config key\(s\) \['synthesis'\]"),
    (DATA + "model: {checkpoint: missing.safetensors}\n", "does not exist"),
    (DATA + FAST + "synthesize: {num_patches: -4}\n", "num_patches"),
])
def test_config_mistakes_are_one_clear_line(tmp_path, capsys, text, match):
    assert _run(_cfg(tmp_path, text), tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert err.startswith("diffmix-aug: error:") and err.count("\n") == 1
    import re

    assert re.search(match, err), err


def test_missing_config_path(tmp_path, capsys):
    assert _run(tmp_path / "nope.yaml", tmp_path / "o") == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_non_empty_out_needs_resume_or_overwrite(tmp_path, capsys):
    cfg = _cfg(tmp_path, DATA + FAST + "diffmix: {batch_size: 2, seed: 0}\n")
    out = tmp_path / "o"
    assert _run(cfg, out, "--num", "2") == 0
    first = sorted(out.glob("*.npy"))
    assert len(first) == 2
    capsys.readouterr()
    assert _run(cfg, out, "--num", "2") == 2
    assert "--resume" in capsys.readouterr().err
    assert sorted(out.glob("*.npy")) == first  # nothing mixed in
    # --resume keeps the two and writes only the missing ones, with new seeds
    assert _run(cfg, out, "--num", "3", "--resume") == 0
    assert "wrote 1 new patches" in capsys.readouterr().out
    now = sorted(out.glob("*.npy"))
    assert len(now) == 3 and set(first) <= set(now)
    assert len({np.load(f).tobytes() for f in now}) == 3
    assert _run(cfg, out, "--num", "3", "--resume") == 0  # complete: nothing to do
    assert "wrote 0 new patches" in capsys.readouterr().out
    # --overwrite replaces them (the same names: a patch's name is its rank, batch and position)
    assert _run(cfg, out, "--num", "2", "--overwrite") == 0
    assert "wrote 2 new patches" in capsys.readouterr().out
    after = sorted(out.glob("*.npy"))
    assert after == first and not (out / f"{now[-1].stem}.json").exists()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("x")
    assert _run(cfg, tmp_path / "foreign", "--num", "1") == 2


def test_resume_from_another_configuration_is_refused_with_the_mismatch_named(tmp_path, capsys):
    out = tmp_path / "o"
    assert _run(_cfg(tmp_path, DATA + FAST + "diffmix: {batch_size: 2, mode: balance}\n"), out, "--num", "2") == 0
    capsys.readouterr()
    other = tmp_path / "other"
    other.mkdir()
    cfg = _cfg(other, DATA + FAST.replace("t_start: 250", "t_start: 200") + "diffmix: {batch_size: 2, mode: enlarge}\n")
    assert _run(cfg, out, "--num", "3", "--resume") == 2
    err = capsys.readouterr().err
    assert "made by another configuration" in err and "mode 'balance' there, 'enlarge' here" in err
    assert "sampler.t_start 250 there, 200 here" in err
    assert len(list(out.glob("*.npy"))) == 2  # nothing mixed in


def test_torchrun_shards_are_disjoint_and_hovernet_reads_the_store(tmp_path, monkeypatch, capsys):
    """A simulated 2-rank torchrun: disjoint shards of one store that HoVer-Net's loader reads."""
    from hovernet_replica import FileLoader, gen_targets

    cfg = _cfg(tmp_path, DATA + FAST + "diffmix: {mode: balance, seed: 0, batch_size: 2}\nsynthesize: {num_patches: 5}\n")
    out = tmp_path / "out"
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert _run(cfg, out) == 0
    assert "rank 1/2: wrote 2 new patches" in capsys.readouterr().out
    files = sorted(out.glob("*.npy"))
    assert [f.name[:10] for f in files].count("diffmix_r0") == 3 and len(files) == 5
    arrays = [np.load(f) for f in files]
    assert all(a.shape == (64, 64, 5) and a.dtype == np.int32 for a in arrays)
    assert len({a.tobytes() for a in arrays}) == 5
    seeds = [json.loads(f.with_suffix(".json").read_text())["batch_seed"] for f in files]
    assert len(set(seeds)) == 3 + 2 - 2  # two batches of 2 + one of 1 on rank 0, one of 2 on rank 1: 4 seeds
    loader = FileLoader([str(f) for f in files], with_type=True, input_shape=(48, 48), mask_shape=(32, 32),
                        target_gen=(gen_targets, {}))
    assert loader[0]["hv_map"].shape == (32, 32, 2)


def test_the_same_config_and_seed_write_the_same_patches(tmp_path):
    """Each patch depends on the config, the seed, the rank and its batch only (uniform source picks):
    a run interrupted and resumed writes what one uninterrupted run writes."""
    cfg = _cfg(tmp_path, DATA + FAST + "diffmix: {batch_size: 2, seed: 3}\n")
    one, two = tmp_path / "one", tmp_path / "two"
    assert _run(cfg, one, "--num", "4") == 0
    assert _run(cfg, two, "--num", "2") == 0
    assert _run(cfg, two, "--num", "4", "--resume") == 0
    a, b = sorted(one.glob("*.npy")), sorted(two.glob("*.npy"))
    assert [f.name for f in a] == [f.name for f in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.load(x), np.load(y))


def test_export_consep_layout_and_toy_to_hovernet(tmp_path, capsys):
    from hovernet_replica import FileLoader, gen_targets

    from diffmix_aug.data.readers import read_hovernet_npy

    out = tmp_path / "toy"
    assert main(["export", "--dataset", "toy", "--num", "3", "--size", "64", "--out", str(out), "--no-progress"]) == 0
    files = sorted(out.glob("*.npy"))
    assert [f.name for f in files] == ["toy_0000.npy", "toy_0001.npy", "toy_0002.npy"]
    assert "wrote 3 HoVer-Net patches (64, 64)" in capsys.readouterr().out
    loader = FileLoader([str(f) for f in files], with_type=True, input_shape=(48, 48), mask_shape=(32, 32),
                        target_gen=(gen_targets, {}))
    assert loader[0]["np_map"].shape == (32, 32)
    assert main(["export", "--dataset", "toy", "--num", "3", "--out", str(out), "--no-progress"]) == 2  # not empty
    # CoNSeP layout from the real patches in tests/data, cut into HoVer-Net windows
    src = tmp_path / "consep"
    (src / "Images").mkdir(parents=True)
    (src / "Labels").mkdir()
    data = Path(__file__).resolve().parents[1] / "data" / "he_patches"
    for k in (1, 2):
        (src / "Images" / f"patch{k}.png").write_bytes((data / f"patch{k}.png").read_bytes())
        (src / "Labels" / f"patch{k}.mat").write_bytes((data / f"patch{k}.mat").read_bytes())
    out2 = tmp_path / "win"
    with pytest.warns(UserWarning, match="merge=False keeps raw type ids"):  # raw ids kept, as asked
        assert main(["export", "--dataset", "consep", "--input", str(src), "--no-merge", "--patch-size", "128",
                     "--step", "128", "--out", str(out2), "--no-progress"]) == 0
    got = sorted(p.name for p in out2.glob("*.npy"))
    assert got[:2] == ["patch1_000.npy", "patch1_001.npy"] and len(got) == 8
    s = read_hovernet_npy(out2 / "patch1_000.npy")
    assert s.shape == (128, 128)
    assert main(["export", "--dataset", "pannuke", "--input", str(src), "--out", str(tmp_path / "p")]) == 2


SHIPPED_CONFIGS = Path(__file__).resolve().parents[2] / "diffmix_aug" / "configs"
CONSEP_TRAIN = Path(__file__).resolve().parents[3] / "shared" / "data" / "consep_256" / "train"


def _synthesize_outside(tmp_path, config, *extra):
    """``diffmix-aug synthesize`` run from a folder outside the repository (a fresh process)."""
    import subprocess
    import sys

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    res = subprocess.run([sys.executable, "-m", "diffmix_aug.cli", "synthesize", "--config", str(config),
                          "--out", str(outside / "X"), "--num", "2", "--no-progress", *extra],
                         cwd=outside, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr
    assert len(list((outside / "X").glob("*.npy"))) == 2, res.stdout
    return outside / "X"


def test_shipped_toy_config_runs_from_any_folder(tmp_path):
    out = _synthesize_outside(tmp_path, SHIPPED_CONFIGS / "synthesize_toy.yaml")
    assert json.loads((out / "manifest.json").read_text())["mode"] == "union"


@pytest.mark.skipif(not CONSEP_TRAIN.is_dir(), reason=f"real CoNSeP patches not found at {CONSEP_TRAIN}")
def test_shipped_consep_config_runs_from_any_folder(tmp_path):
    out = _synthesize_outside(tmp_path, SHIPPED_CONFIGS / "synthesize_consep.yaml", "--data-root", str(CONSEP_TRAIN))
    from diffmix_aug.data.readers import read_hovernet_npy

    assert read_hovernet_npy(next(out.glob("*.npy"))).shape == (128, 128)


def test_shipped_consep_config_without_data_says_what_to_pass(tmp_path, capsys):
    assert main(["synthesize", "--config", str(SHIPPED_CONFIGS / "synthesize_consep.yaml"), "--out",
                 str(tmp_path / "X"), "--num", "2"]) == 2
    err = capsys.readouterr().err
    assert "`data.path` is required" in err and "--data-root" in err
