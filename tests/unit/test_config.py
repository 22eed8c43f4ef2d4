"""DiffMixConfig is the one owner of every online option: names, defaults, checks, docs, CLI choices."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from diffmix_aug.config import REMOVED, DiffMixConfig, load_diffmix_config, options_reference
from diffmix_aug.modes import MODES, Mode

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_reference_is_generated_from_the_config():
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert text == options_reference(), "docs/configuration.md is out of date: run `python docs/gen_configuration.py`"
    for f in dataclasses.fields(DiffMixConfig):
        assert f.metadata["doc"] and callable(f.metadata["check"]), f.name
        assert f"| `{f.name}` |" in text and f"`{f.default!r}`" in text
    for name in REMOVED:
        assert f"| `{name}` |" in text
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "gen_configuration.py"), "--check"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def test_choices_are_literal_types_and_the_cli_takes_them():
    from diffmix_aug.cli import build_parser

    hints = typing.get_type_hints(DiffMixConfig)
    assert hints["mode"] is Mode and typing.get_args(Mode) == MODES
    assert typing.get_args(hints["policy"]) == ("fifo", "reuse")
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["synthesize"]
    mode = next(a for a in sub._actions if a.dest == "mode")
    assert tuple(mode.choices) == MODES


@pytest.mark.parametrize("name", sorted(REMOVED))
def test_removed_options_are_refused_with_the_replacement_named(name):
    with pytest.raises(ValueError, match=f"`{name}` was removed: .*(diffmix-aug synthesize|thread)"):
        DiffMixConfig.from_dict({name: "x"})
    with pytest.raises(ValueError, match=f"`{name}` was removed"):
        DiffMixConfig().replace(**{name: "x"})


def test_dataset_overrides_are_options_by_name():
    from diffmix_aug.data.toy import make_toy_dataset
    from diffmix_aug.dataset import DiffMixDataset

    base = make_toy_dataset(2, 32, 0)

    def synth(images, inst, types, generator=None):
        return images

    with pytest.raises(ValueError, match=r"unknown key\(s\) \['synthetic_rate'\] in DiffMixDataset options; valid keys"):
        DiffMixDataset(base, synth, synthetic_rate=0.3)
    with pytest.raises(ValueError, match="`producer_backend` was removed"):
        DiffMixDataset(base, synth, producer_backend="process")
    with pytest.raises(TypeError, match="pass it by name: mode='balance'"):
        DiffMixDataset(base, synth, "balance")
    cfg = DiffMixConfig(mode="enlarge", synthetic_ratio=0.2)
    with DiffMixDataset(base, synth, cfg, synthetic_ratio=0.3, start=False, num_classes=5) as ds:
        assert (ds.config.mode, ds.config.synthetic_ratio, ds.config.patch_size) == ("enlarge", 0.3, (32, 32))
    with DiffMixDataset(base, synth, {"mode": "balance"}, start=False) as ds:
        assert ds.config.mode == "balance" and ds.classes.rare_classes == (1,)


def test_values_are_checked_once_and_round_trip():
    cfg = DiffMixConfig(patch_size=32, rare_classes=2, warmup=3)
    assert cfg.patch_size == (32, 32) and cfg.rare_classes == (2,) and cfg.warmup == 3
    assert load_diffmix_config(cfg.to_dict()) == cfg
    assert load_diffmix_config(None) == DiffMixConfig()
    for bad, err in [({"warmup": "later"}, ValueError), ({"policy": "lru"}, ValueError),
                     ({"warmup_timeout": float("nan")}, ValueError), ({"num_classes": 1}, ValueError),
                     ({"seed": 1.5}, TypeError), ({"schedule": {"start": 1}}, ValueError)]:
        with pytest.raises(err, match=next(iter(bad)).split("_")[0]):
            DiffMixConfig(**bad)
