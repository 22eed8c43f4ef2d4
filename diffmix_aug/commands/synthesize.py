"""``diffmix-aug synthesize``: the offline mode (the paper's): render N synthetic patches into a patch store.

The output folder is a :class:`~diffmix_aug.store.PatchStore`: HoVer-Net ``.npy`` files (``int32
[H, W, 5]`` = RGB, instance, type), a JSON sidecar each (label-map parameters, seeds, source index,
checkpoint hash, sampler settings) and a ``manifest.json`` (mode, class table, checkpoint, patch
shape, sampler), all written atomically. Add the folder to HoVer-Net's ``train_dir_list``, or serve
it with ``DiffMixDataset(base, None, cache_dir=OUT)`` (docs/configuration.md, "The offline pool").
Patches are made by the same :class:`~diffmix_aug.generator.PatchGenerator` as the online
producer; source patches are drawn uniformly (the online producer also biases them toward the rare
classes its cache lacks), so patch ``diffmix_r{rank}_{batch}_{position}`` depends only on the
config, the seed, the rank and its batch. Under ``torchrun`` every rank writes its own share with
rank-offset seeds, so the shards never collide or repeat a patch.

The YAML config (``diffmix_aug/configs/synthesize_toy.yaml`` runs from the shipped checkpoint)::

    data:                       # the labelled training patches label maps start from
      kind: hovernet_npy        # hovernet_npy | consep | toy
      path: dataset/training_data/consep/consep/train/540x540_164x164
      dataset: consep           # class table (rare classes, number of classes)
      # consep only: merge: auto, downsample: 1
      # toy only: toy: {n: 64, size: 64, seed: 0}
    model:
      checkpoint: consep-20x    # a path, or a shipped name (consep-20x, toy)
      device: cuda              # default: cuda when available, else cpu
      precision: fp16           # fp32 | fp16 | bf16
      sampler: {preset: reference}   # a preset (reference: 55 DDIM steps from t = 540) and/or DDIMSampler
                                     # arguments (solver, steps, t_start, guidance_scale, ...)
      # preset: tiny            # random weights: refused unless --allow-untrained
    diffmix: {mode: union, seed: 0, batch_size: 8, patch_size: 256}   # DiffMixConfig fields
    synthesize: {num_patches: 1000}

Every section rejects unknown keys and lists the valid ones; of the ``diffmix`` section, ``mode``,
``seed``, ``batch_size``, ``patch_size``, ``rare_classes`` and ``num_classes`` are used. ``--out``
must be empty or new, unless ``--resume`` (keep this rank's patches there, which must come from the
same configuration, and write only the missing ones) or ``--overwrite`` (delete this rank's earlier
patches first).
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
from pathlib import Path
from typing import Any

from ..modes import MODES
from . import require_config

HELP = "Write N DiffMix synthetic patches (HoVer-Net .npy format) to a folder; sharded under torchrun."

SECTIONS = ("data", "model", "diffmix", "synthesize")
DATA_KEYS = {"kind", "path", "dataset", "merge", "downsample", "toy"}
TOY_KEYS = {"n", "size", "seed"}
MODEL_KEYS = {"checkpoint", "device", "precision", "sampler", "cuda_graph", "preset", "image_size", "num_classes",
              "init_seed"}
SYNTH_KEYS = {"num_patches"}
KINDS = ("hovernet_npy", "consep", "toy")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="YAML config (data, model, diffmix, synthesize)")
    parser.add_argument("--out", type=Path, required=True, help="output folder for the .npy patches")
    parser.add_argument("--num", type=int, default=None, help="number of patches (overrides synthesize.num_patches)")
    parser.add_argument("--mode", choices=MODES, default=None,
                        help="balance (DiffMix-B) / enlarge (DiffMix-E) / union (the paper's DiffMix) / composed "
                             "(enlarge(balance(map))) (overrides diffmix.mode)")
    parser.add_argument("--seed", type=int, default=None, help="seed (overrides diffmix.seed)")
    parser.add_argument("--device", default=None, help="synthesizer device (overrides model.device)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="the labelled patches label maps start from (overrides data.path; the shipped "
                             "synthesize_consep.yaml needs it: a CoNSeP-layout folder)")
    parser.add_argument("--allow-untrained", action="store_true",
                        help="allow model.preset without a checkpoint (random weights: noise images, smoke tests only)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true",
                       help="--out holds patches of an earlier run of this configuration: keep them and write "
                            "only the missing ones")
    group.add_argument("--overwrite", action="store_true",
                       help="delete this rank's patches (and sidecars) already in --out first")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _section(cfg: dict[str, Any], name: str, valid: set[str] | None = None) -> dict[str, Any]:
    value = cfg.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"config section `{name}` must be a mapping, got {type(value).__name__}")
    if valid is not None:
        unknown = sorted(str(k) for k in set(value) - valid)
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in config section `{name}`; valid keys are {sorted(valid)}")
    return value


def check_config(cfg: Any) -> dict[str, Any]:
    """Validate the whole config's layout (sections and keys); returns it."""
    if not isinstance(cfg, dict):
        raise ValueError(f"the synthesize config must be a mapping with sections {list(SECTIONS)}, got "
                         f"{type(cfg).__name__}")
    unknown = sorted(str(k) for k in set(cfg) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown top-level config key(s) {unknown}; valid sections are {list(SECTIONS)}")
    data = _section(cfg, "data", DATA_KEYS)
    _section(data, "toy", TOY_KEYS)
    model = _section(cfg, "model", MODEL_KEYS)
    _section(model, "sampler")
    _section(cfg, "synthesize", SYNTH_KEYS)
    return cfg


def build_source(data: dict[str, Any]):
    """The labelled dataset (``NucleiDataset``) described by the ``data`` section."""
    from .._checks import check_choice, check_positive_int
    from ..data.classes import get_dataset_info
    from ..data.dataset import NucleiDataset
    from ..data.toy import make_toy_dataset

    kind = check_choice("data.kind", data.get("kind", "toy"), KINDS)
    if kind == "toy":
        toy = data.get("toy") or {}
        return make_toy_dataset(check_positive_int("data.toy.n", toy.get("n", 64)),
                                check_positive_int("data.toy.size", toy.get("size", 64)),
                                check_positive_int("data.toy.seed", toy.get("seed", 0), allow_zero=True))
    if not data.get("path"):
        raise ValueError(f"`data.path` is required for data.kind={kind!r}: the folder of the labelled patches; set "
                         "it in the config or pass --data-root")
    info = get_dataset_info(data.get("dataset", "consep"))
    if kind == "hovernet_npy":
        ds = NucleiDataset.from_hovernet_npy_dir(data["path"], info)
    else:
        from ..data.class_scan import check_merge_arg

        try:
            merge = check_merge_arg(data.get("merge", "auto"))
        except ValueError:
            raise ValueError(f"`data.merge` must be auto, true or false, got {data.get('merge')!r}") from None
        ds = NucleiDataset.from_consep_dir(data["path"], info.name, merge=merge)
    return ds.downsampled(check_positive_int("data.downsample", data.get("downsample", 1)))


def _sampler_kwargs(sampler: dict[str, Any]) -> dict[str, Any]:
    from ..sampling._base import REMOVED_SETTINGS
    from ..sampling.ddim import DDIMSampler

    for key in sampler:
        if key in REMOVED_SETTINGS:
            raise ValueError(f"`model.sampler.{key}` was removed: {REMOVED_SETTINGS[key]}")
    valid = sorted(["preset"] + [p.name for p in inspect.signature(DDIMSampler.__init__).parameters.values()
                                 if p.name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD])
    unknown = sorted(str(k) for k in set(sampler) - set(valid))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in config section `model.sampler`; valid keys are {valid}")
    return dict(sampler)


def build_synthesizer(model: dict[str, Any], device: str | None, *, allow_untrained: bool = False):
    """A :class:`Synthesizer` from ``model.checkpoint`` (or, only when allowed, an untrained ``model.preset``)."""
    import torch

    from ..sampling.presets import make_sampler
    from ..sampling.synthesizer import Synthesizer

    device = device or model.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    sampler_kw = _sampler_kwargs(model.get("sampler") or {})
    precision = model.get("precision", "fp32")
    if model.get("checkpoint"):
        from ..sdm.registry import SHIPPED_CHECKPOINTS, resolve_checkpoint

        try:
            path = resolve_checkpoint(model["checkpoint"])
        except FileNotFoundError:
            raise FileNotFoundError(f"model.checkpoint {str(model['checkpoint'])!r} does not exist; train one with "
                                    "`diffmix-aug train-sdm --export`, or name a shipped checkpoint: "
                                    f"{sorted(SHIPPED_CHECKPOINTS)}") from None
        return Synthesizer.from_checkpoint(path, device=device, precision=precision,
                                           cuda_graph=bool(model.get("cuda_graph", True)),
                                           sampler=sampler_kw.pop("preset", None), **sampler_kw)
    if "preset" in model:
        if not allow_untrained:
            raise ValueError("config section `model` has no `checkpoint`, only `preset`: that synthesizes from random "
                             "weights (RGB noise with valid-looking labels). Set model.checkpoint to a trained "
                             "SDM, or pass --allow-untrained for a smoke test")
        from ..sdm import build_sdm

        torch.manual_seed(int(model.get("init_seed", 0)))
        net = build_sdm(model["preset"], num_label_channels=int(model.get("num_classes", 5)) + 1,
                        image_size=int(model.get("image_size", 64)))
        return Synthesizer(net, make_sampler(sampler_kw.pop("preset", None), **sampler_kw), device=device,
                           precision=precision)
    raise ValueError("config section `model` needs `checkpoint:` a trained SDM export, or a shipped name "
                     "(toy, consep-20x)")


def _dist() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


_NAME = re.compile(r"^diffmix_r(\d+)_(\d+)_(\d+)$")


def _existing(out: Path, rank: int | None = None) -> list[Path]:
    pattern = "diffmix_r*_*.npy" if rank is None else f"diffmix_r{rank}_*.npy"
    return sorted(p for p in out.glob(pattern) if p.is_file()) if out.is_dir() else []


def prepare_out(out: Path, *, resume: bool, overwrite: bool, rank: int) -> list[Path]:
    """Check ``--out`` against ``--resume`` / ``--overwrite``; returns this rank's patches to keep.

    Each rank judges only what is not another rank's shard (``diffmix_r{other}_*``) or the store's
    manifest: under ``torchrun`` the ranks start together, so one rank's fresh files must not stop another.
    """
    from ..store import MANIFEST

    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; expected a folder (new or empty)")
    if not out.is_dir():
        return []
    mine = _existing(out, rank)
    if overwrite:
        for p in mine:
            p.unlink(missing_ok=True)
            p.with_suffix(".json").unlink(missing_ok=True)
        if not _existing(out):  # nothing of another rank left: the manifest may change too
            (out / MANIFEST).unlink(missing_ok=True)
        return []
    if resume:
        return mine
    shard = re.compile(r"^diffmix_r(\d+)_.*\.(npy|json)$")
    blocking = [p for p in out.iterdir() if not p.name.startswith(".") and p.name != MANIFEST
                and not ((m := shard.match(p.name)) and int(m.group(1)) != rank)]
    if blocking:
        raise ValueError(f"--out {str(out)!r} already holds {len(blocking)} file(s) (e.g. {blocking[0].name}); "
                         "pass --resume to keep them and add only the missing patches, --overwrite to replace "
                         "them, or choose a new folder")
    return []


def synthesize(cfg: dict[str, Any], out: Path, num: int | None = None, *, progress: bool = True,
               device: str | None = None, allow_untrained: bool = False, resume: bool = False,
               overwrite: bool = False) -> list[Path]:
    """Write this rank's share of ``num`` patches into the patch store ``out``; returns the files this call wrote."""
    from tqdm.auto import tqdm

    from .._checks import check_positive_int
    from ..class_table import resolve_classes
    from ..config import DiffMixConfig
    from ..generator import PatchGenerator
    from ..pipeline import build_label_sampler
    from ..store import PatchStore

    check_config(cfg)
    dm = DiffMixConfig.from_dict(_section(cfg, "diffmix"))
    total = check_positive_int("synthesize.num_patches",
                               num if num is not None else _section(cfg, "synthesize").get("num_patches", 100))
    rank, world = _dist()
    share = total // world + (1 if rank < total % world else 0)
    out = Path(out)
    kept = prepare_out(out, resume=resume, overwrite=overwrite, rank=rank)
    source = build_source(_section(cfg, "data"))
    synth = build_synthesizer(_section(cfg, "model"), device, allow_untrained=allow_untrained)
    classes = resolve_classes(dm.num_classes, dm.rare_classes, source.info, synth, balances=dm.balances,
                              mode=dm.mode)
    shape = dm.patch_size or tuple(source[0].shape)
    labels = build_label_sampler(source, dm.mode, classes.num_classes, classes.rare_classes, patch_size=shape)
    gen = PatchGenerator(source, labels, synth, mode=dm.mode, classes=classes, patch_shape=shape, seed=dm.seed,
                         rank=rank)
    store = PatchStore.create(out, gen.identity, what="--out", created_by="diffmix-aug synthesize")
    if not store.writable:
        raise OSError(f"cannot write to --out {str(out)!r}")
    before = set(_existing(out, rank))
    todo = max(0, share - len(kept))
    # the next batch after the last one kept: every batch's patches depend on its own key only
    batch = 1 + max((int(m.group(2)) for p in kept if (m := _NAME.match(p.stem))), default=-1)
    with tqdm(total=share, initial=share - todo, desc=f"synthesize rank {rank}/{world}", unit="patch",
              disable=not progress or rank != 0) as bar:
        written = 0
        while written < todo:
            for j, patch in enumerate(gen.batch(batch, min(dm.batch_size, todo - written))):
                store.write(f"diffmix_r{rank}_{batch:08d}_{j:03d}", patch)
                written += 1
                bar.update(1)
            batch += 1
    return sorted(set(_existing(out, rank)) - before)


def run(args: argparse.Namespace) -> int:
    from .._yaml import load_yaml

    require_config(args.config, "diffmix_aug/configs/synthesize_toy.yaml")
    cfg = load_yaml(args.config) or {}
    try:
        check_config(cfg)
    except ValueError as exc:
        raise ValueError(f"{args.config}: {exc}") from exc
    if args.data_root is not None:
        cfg["data"] = {**(cfg.get("data") or {}), "path": str(args.data_root)}
    dm = dict(cfg.get("diffmix") or {})
    if args.mode is not None:
        dm["mode"] = args.mode
    if args.seed is not None:
        dm["seed"] = args.seed
    cfg["diffmix"] = dm
    files = synthesize(cfg, Path(args.out), args.num, progress=not args.no_progress, device=args.device,
                       allow_untrained=args.allow_untrained, resume=args.resume, overwrite=args.overwrite)
    rank, world = _dist()
    total = len(_existing(Path(args.out), rank))
    print(f"rank {rank}/{world}: wrote {len(files)} new patches to {args.out} ({total} of this rank's there now)")
    return 0
