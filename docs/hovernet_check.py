"""Check docs/hovernet.md against HoVer-Net's real code: the one-line wrap, the CPU edits, the epoch-end fix.

    git clone https://github.com/vqdang/hover_net ../hover_net
    python docs/hovernet_check.py --hover-net ../hover_net [--data ../shared/data/consep_256/train]

What runs is HoVer-Net's own code, from a copy of the checkout with the edits docs/hovernet.md lists
applied (``"cuda"`` -> ``"cpu"``, ``nr_gpus`` at least 1, the ``viz_step_output`` fix): its
``FileLoader`` (wrapped by ``DiffMixDataset`` exactly as the page says), ``gen_targets``,
``worker_init_fn`` in a 2-worker ``DataLoader``, the ``fast``-mode network, ``train_step``,
``valid_step``, ``viz_step_output`` and ``proc_valid_step_output``. Not run: ``run_train.py``'s
``TrainManager`` (it needs a config edited for your folders), the ImageNet weights, a whole epoch.

imgaug: when it does not import (it is not installable on every machine; 0.4.0 needs numpy < 2),
small numpy stand-ins with imgaug's ``to_deterministic().augment_image`` API replace its
augmenters (90-degree rotations for ``Affine``, the centre crop, flips, ``OneOf``, ``Lambda``
calling HoVer-Net's own ``dataloader/augs.py`` functions); the script says which it used.

It also runs the unedited ``viz_step_output`` and reports whether it fails on this numpy
(it does on numpy >= 1.24: a ragged ``np.array`` of shapes). Exit 0 when every step passed.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: (file, old, new, count): the edits docs/hovernet.md lists, applied to a copy of the checkout
CPU_EDITS = [
    ("run_train.py", '"cuda"', '"cpu"', 1),
    ("run_train.py", "self.nr_gpus = torch.cuda.device_count()", "self.nr_gpus = max(1, torch.cuda.device_count())", 1),
    ("models/hovernet/run_desc.py", '"cuda"', '"cpu"', 6),
    ("models/hovernet/utils.py", '"cuda"', '"cpu"', 2),
]
VIZ_OLD = ("    aligned_shape = [list(imgs.shape), list(true_np.shape), list(pred_np.shape)]\n"
           "    aligned_shape = np.min(np.array(aligned_shape), axis=0)[1:3]\n")
VIZ_NEW = "    aligned_shape = np.min([imgs.shape[1:3], true_np.shape[1:3], pred_np.shape[1:3]], axis=0)\n"


def _stub_imgaug() -> None:
    """imgaug's augmenter API as small numpy objects (only what HoVer-Net's FileLoader calls)."""

    class _Aug:
        def __init__(self, *args, seed=None, **kwargs):
            self.rng = np.random.RandomState(None if seed is None else int(seed) % 2**32)
            self.args, self.kwargs = args, kwargs

        def to_deterministic(self):
            op = self.draw()
            return types.SimpleNamespace(augment_image=lambda x: np.ascontiguousarray(op(x)))

    class Affine(_Aug):  # order 0, label safe: a 90-degree rotation stands in for the affine warp
        def draw(self):
            k = self.rng.randint(4)
            return lambda x: np.rot90(x, k, axes=(0, 1))

    class CropToFixedSize(_Aug):
        def draw(self):
            h, w = self.args[:2]

            def crop(x):
                y0, x0 = max(0, (x.shape[0] - h) // 2), max(0, (x.shape[1] - w) // 2)
                return x[y0:y0 + h, x0:x0 + w]
            return crop

    class Fliplr(_Aug):
        def draw(self):
            flip = self.rng.rand() < self.args[0]
            return lambda x: x[:, ::-1] if flip else x

    class Flipud(_Aug):
        def draw(self):
            flip = self.rng.rand() < self.args[0]
            return lambda x: x[::-1] if flip else x

    class Lambda(_Aug):
        def draw(self):
            state = np.random.RandomState(self.rng.randint(2**31))
            fn = self.kwargs["func_images"]
            return lambda x: fn([x], state, None, None)[0]

    class AdditiveGaussianNoise(_Aug):
        def draw(self):
            lo, hi = self.kwargs["scale"]
            s, seed = self.rng.uniform(lo, hi), self.rng.randint(2**31)
            return lambda x: np.clip(x + np.random.RandomState(seed).normal(0, s, x.shape), 0, 255).astype(x.dtype)

    class Sequential(_Aug):
        def draw(self):
            ops = [a.draw() for a in (self.args[0] if self.args else [])]
            if self.kwargs.get("random_order"):
                ops = [ops[i] for i in self.rng.permutation(len(ops))]

            def run(x):
                for op in ops:
                    x = op(x)
                return x
            return run

    class OneOf(_Aug):
        def draw(self):
            children = self.args[0]
            return children[self.rng.randint(len(children))].draw()

    iaa = types.ModuleType("imgaug.augmenters")
    for cls in (Affine, CropToFixedSize, Fliplr, Flipud, Lambda, AdditiveGaussianNoise, Sequential, OneOf):
        setattr(iaa, cls.__name__, cls)
    core = types.ModuleType("imgaug.imgaug")
    core.seed = lambda seed: None
    pkg = types.ModuleType("imgaug")
    pkg.augmenters, pkg.imgaug, pkg.seed = iaa, core, core.seed
    sys.modules.update({"imgaug": pkg, "imgaug.augmenters": iaa, "imgaug.imgaug": core})


def _copy_with_edits(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True)
    for sub in ("config.py", "dataset.py", "run_train.py", "dataloader", "misc", "models", "run_utils"):
        (shutil.copytree if (src / sub).is_dir() else shutil.copy)(src / sub, dst / sub)
    for rel, old, new, count in CPU_EDITS:
        text = (dst / rel).read_text()
        if text.count(old) != count:
            raise SystemExit(f"{rel}: expected {count} occurrence(s) of {old!r}, found {text.count(old)}; "
                             "this HoVer-Net version differs from the one docs/hovernet.md describes")
        (dst / rel).write_text(text.replace(old, new))
    viz = dst / "models/hovernet/run_desc.py"
    if VIZ_OLD not in viz.read_text():
        raise SystemExit("models/hovernet/run_desc.py: viz_step_output's aligned_shape lines differ from the ones "
                         "docs/hovernet.md edits")
    viz.write_text(viz.read_text().replace(VIZ_OLD, VIZ_NEW))


def _write_patches(folder: Path, data: Path | None, n: int) -> None:
    """``n`` HoVer-Net patches ``int32 [256, 256, 5]``: real CoNSeP windows, or the toy data."""
    from diffmix_aug import make_toy_dataset
    from diffmix_aug.data import NucleiDataset

    ds = NucleiDataset.from_consep_dir(data) if data is not None else make_toy_dataset(n, size=256, seed=0)
    folder.mkdir(parents=True)
    for i in range(n):
        np.save(folder / f"p{i:03d}.npy", ds[i * (len(ds) // n)].to_hovernet())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hover-net", type=Path, required=True, help="a vqdang/hover_net checkout")
    ap.add_argument("--data", type=Path, default=None, help="a CoNSeP-layout folder of 256 px patches "
                    "(e.g. ../shared/data/consep_256/train); default: the toy data")
    ap.add_argument("--steps", type=int, default=2, help="training steps of the wrapped loader")
    args = ap.parse_args(argv)
    import torch

    from diffmix_aug import DiffMixDataset, Synthesizer

    try:
        importlib.import_module("imgaug.augmenters")
        print("imgaug: the real one")
    except Exception as exc:  # not installed, or 0.4.0 on numpy >= 2
        _stub_imgaug()
        print(f"imgaug: numpy stand-ins ({type(exc).__name__}: {exc})")
    if "docopt" not in sys.modules and importlib.util.find_spec("docopt") is None:
        sys.modules["docopt"] = types.SimpleNamespace(docopt=None)  # run_train.py imports it at module level
    print("numpy", np.__version__, "torch", torch.__version__)
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _copy_with_edits(args.hover_net.resolve(), tmp / "hn")
        sys.path.insert(0, str(tmp / "hn"))
        original = (args.hover_net / "models/hovernet/run_desc.py").read_text()
        run_desc = importlib.import_module("models.hovernet.run_desc")
        opt = importlib.import_module("models.hovernet.opt")
        from dataloader.train_loader import FileLoader
        from models.hovernet.targets import gen_targets
        from run_train import worker_init_fn

        _write_patches(tmp / "train", args.data, 8)
        shape = {"input_shape": [256, 256], "mask_shape": [164, 164]}  # config.py's model_mode = "fast"
        files = sorted(str(p) for p in (tmp / "train").glob("*.npy"))

        # 1. the one-line wrap of the training FileLoader, as in run_train.py's _get_datagen
        input_dataset = FileLoader(files, mode="train", with_type=True, setup_augmentor=False,
                                   target_gen=(gen_targets, {}), **shape)
        synth = Synthesizer.from_checkpoint("consep-20x", device="cpu", steps=3)  # 3 steps: plumbing, not quality
        input_dataset = DiffMixDataset(input_dataset, synth, mode="union", synthetic_ratio=0.5, seed=0,
                                       rare_classes=(1,), num_classes=5, warmup="block",
                                       warmup_items=4)
        loader = torch.utils.data.DataLoader(input_dataset, num_workers=2, batch_size=2, shuffle=True,
                                             drop_last=True, worker_init_fn=worker_init_fn)
        cfg = opt.get_config(5, "fast")["phase_list"][0]["run_info"]["net"]
        net = torch.nn.DataParallel(cfg["desc"]()).to("cpu")
        run_info = {"net": {"desc": net, "optimizer": cfg["optimizer"][0](net.parameters(), **cfg["optimizer"][1]),
                            "extra_info": cfg["extra_info"]}}
        synthetic = 0
        for step, batch in enumerate(loader):
            if step == args.steps:
                break
            synthetic += int(batch["is_synthetic"].sum())
            out = run_desc.train_step(batch, (run_info, None))
            loss = out["EMA"]["overall_loss"]
            print(f"train_step {step}: keys {sorted(batch)}, img {tuple(batch['img'].shape)}, "
                  f"{int(batch['is_synthetic'].sum())} synthetic, loss {loss:.4f}")
            if not np.isfinite(loss):
                failed.append(f"train_step {step}: loss {loss}")
        assert input_dataset.config.patch_size == (256, 256), input_dataset.config.patch_size  # the .npy side
        print(f"synthetic items served: {synthetic}; stats: {input_dataset.stats()}")
        input_dataset.close()

        # 2. epoch end: train's VisualizeOutput and valid's proc_valid_step_output, with the fix
        run_desc.viz_step_output(out["raw"])
        valid = FileLoader(files[:4], mode="valid", with_type=True, setup_augmentor=True,
                           target_gen=(gen_targets, {}), **shape)
        vbatch = next(iter(torch.utils.data.DataLoader(valid, batch_size=4)))
        raw = run_desc.valid_step(vbatch, (run_info, None))["raw"]
        track = run_desc.proc_valid_step_output({k: list(v) for k, v in raw.items()}, nr_types=5)
        print("epoch end with the fix: viz_step_output and proc_valid_step_output ok, np_dice",
              round(float(track["scalar"]["np_dice"]), 4))

        # 3. the unedited viz_step_output on this numpy
        unedited = types.ModuleType("run_desc_unedited")
        unedited.__dict__["__name__"] = "models.hovernet.run_desc"
        sys.modules["run_desc_unedited"] = unedited
        exec(compile(original.replace("from .utils", "from models.hovernet.utils"), "run_desc.py", "exec"),
             unedited.__dict__)
        try:
            unedited.viz_step_output(out["raw"])
            print("unedited viz_step_output: ok on this numpy")
        except ValueError as exc:
            print(f"unedited viz_step_output: ValueError on numpy {np.__version__}: {exc}")
    print("FAILED: " + "; ".join(failed) if failed else "all steps passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
