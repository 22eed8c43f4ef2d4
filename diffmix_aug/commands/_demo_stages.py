"""The stages of ``diffmix-aug demo`` (see :mod:`diffmix_aug.commands.demo`), one function each.

Every stage takes explicit seeds and returns plain, JSON-able numbers for ``report.md``.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

SHIPPED_SDM = "sdm_tiny_toy.safetensors"
SHIPPED_CONFIG = "configs/sdm_tiny.yaml"
SHIPPED_RECIPE = ("shipped, trained by `diffmix-aug train-sdm --config diffmix_aug/configs/sdm_tiny.yaml "
                  "--export diffmix_aug/weights/sdm_tiny_toy.safetensors --export-weights model`")


def shipped_sdm_path() -> Path:
    """Path of the tiny toy SDM shipped in the package (``diffmix_aug/weights``).

    Raises:
        FileNotFoundError: the package was installed without its weights; the message says how to
            train them (``diffmix-aug demo --train``).
    """
    path = Path(str(resources.files("diffmix_aug") / "weights" / SHIPPED_SDM))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the shipped demo SDM is missing; run `diffmix-aug demo --train` to train "
                                f"one, or `diffmix-aug train-sdm --config diffmix_aug/{SHIPPED_CONFIG} --export {path}`")
    return path


def train_demo_sdm(out: Path, steps: int, seed: int, progress: bool) -> Path:
    """Train the tiny SDM on the toy data with the shipped config, for ``steps`` steps; returns the export.

    The stage split of the config is kept in proportion (3/4 stage 1, 1/4 classifier-free fine-tune).
    """
    from ..sdm.checkpoint import export_sdm
    from ..train.config import load_train_config
    from ..train.loop import train_sdm

    config = load_train_config(Path(str(resources.files("diffmix_aug") / SHIPPED_CONFIG)))
    stages = [dict(s) for s in config.to_dict()["train"]["stages"]]
    total = sum(int(s["steps"]) for s in stages)
    left = steps
    for i, s in enumerate(stages):
        s["steps"] = left if i == len(stages) - 1 else max(1, round(steps * int(s["steps"]) / total))
        left -= s["steps"]
    config = config.replace(train={"stages": stages, "seed": seed, "device": "cpu", "sample_interval": 0})
    result = train_sdm(config, out_dir=out / "sdm", progress=progress)
    return export_sdm(result.out_dir, out / "sdm_tiny_toy.safetensors")


def figure2(out: Path, dataset: Any, synth: Any, donors_img: Any, columns: int, seed: int,
            progress: bool = False) -> dict[str, Any]:
    """Write the paper's Figure 2: original / enlarging map / balancing map / GradMix, image over labels.

    The column titles say which images are SDM renders (the two map columns) and which are real pixels.

    Args:
        out: Output folder; writes ``figure2.png``.
        dataset: The toy ``NucleiDataset``.
        synth: A :class:`~diffmix_aug.sampling.synthesizer.Synthesizer`.
        donors_img: A ``DonorBank`` built with ``keep_images=True`` (used by balancing and GradMix).
        columns: Number of example patches (rows of the figure, two each).
        seed: Seed of the label maps, GradMix and the DDIM noise.
        progress: Show a progress bar over the synthesised patches.

    Returns:
        Timing and the indices shown.
    """
    from ..baselines.gradmix import GradMix
    from ..data.sample import NucleiSample
    from ..data.viz import class_legend, label_overlay, save_image_grid
    from ..labelmaps.sampler import LabelMapSampler, borders_for_patch

    info = dataset.info
    palette = info.palette()
    rare = tuple(info.rare_classes)
    stats = [dataset[i] for i in range(len(dataset))]
    # show the patches with the most nuclei that balancing can convert: they make the clearest figure
    counts = [s.info.ids.size for s in stats]
    chosen = sorted(np.argsort(counts)[::-1][:columns].tolist())
    samples = [stats[i] for i in chosen]
    rng = np.random.default_rng(seed)
    borders = borders_for_patch(samples[0].image.shape[0])
    enl = LabelMapSampler("enlarge", num_classes=dataset.num_classes, rare_classes=rare, **borders)
    bal = LabelMapSampler("balance", donors=donors_img, num_classes=dataset.num_classes, rare_classes=rare, **borders)
    gradmix = GradMix(donors_img, rare_classes=rare, inpaint="biharmonic", balance=borders["balance"])
    maps_e = [enl(s, rng) for s in samples]
    maps_b = [bal(s, rng) for s in samples]
    gm = [gradmix(s, rng) for s in samples]
    images = np.stack([s.image for s in samples] * 2)
    inst = np.stack([m.inst_map for m in maps_e + maps_b])
    typ = np.stack([m.type_map for m in maps_e + maps_b])
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    parts = []
    with tqdm(total=len(images), desc="synthesis", unit="patch", disable=not progress) as bar:
        for k in range(0, len(images), 4):  # batches of 4: the bar moves, the memory stays small
            parts.append(synth(images[k:k + 4], inst[k:k + 4], typ[k:k + 4], generator=gen))
            bar.update(len(parts[-1]))
    synthetic = np.concatenate(parts)
    wall = time.perf_counter() - t0
    n = len(samples)
    rows: list[list[np.ndarray]] = []
    titles: list[str] = []
    for j, s in enumerate(samples):
        cells = [NucleiSample.trusted(s.image, s.inst_map, s.type_map),
                 NucleiSample.trusted(synthetic[j], maps_e[j].inst_map, maps_e[j].type_map),
                 NucleiSample.trusted(synthetic[n + j], maps_b[j].inst_map, maps_b[j].type_map), gm[j]]
        rows.append([c.image for c in cells])
        rows.append([label_overlay(c.image, c.inst_map, c.type_map, palette) for c in cells])
        titles += [f"#{chosen[j]} image", "labels"]
    scale = max(1, 160 // samples[0].image.shape[0])
    save_image_grid(out / "figure2.png", rows, row_titles=titles,
                    col_titles=["original\n(real)", "enlarging map\n(SDM render)", "balancing map\n(SDM render)",
                                "GradMix\n(real, pasted)"], scale=scale,
                    legend=class_legend(dataset.info),
                    title="Figure 2 on the toy data: columns 2 and 3 are SDM renders of custom label maps\n"
                          "(not real images); each image is shown above its labels")
    converted = sum(sum(m.report.get("balance", {}).get("converted", {}).values()) for m in maps_b)
    return {"indices": chosen, "patches": 2 * n, "synthesis_s": wall, "s_per_patch": wall / (2 * n),
            "rare_converted": int(converted)}


def balance_histogram(out: Path, dataset: Any, donors: Any, seed: int) -> dict[str, list[int]]:
    """Class counts of the original label maps and of one balancing map per patch; writes a PNG."""
    from ..data.viz import save_class_histogram
    from ..labelmaps.sampler import LabelMapSampler, borders_for_patch

    info = dataset.info
    k = dataset.num_classes
    bal = LabelMapSampler("balance", donors=donors, num_classes=k, rare_classes=tuple(info.rare_classes),
                          **borders_for_patch(dataset[0].image.shape[0]))
    rng = np.random.default_rng(seed)
    before = np.zeros(k, np.int64)
    after = np.zeros(k, np.int64)
    for i in range(len(dataset)):
        s = dataset[i]
        before += np.bincount(s.info.types, minlength=k)[:k]
        m = bal(s, rng)
        t = m.type_map[m.inst_map > 0]
        ids = m.inst_map[m.inst_map > 0]
        _, first = np.unique(ids, return_index=True)
        after += np.bincount(t[first], minlength=k)[:k]
    save_class_histogram(out / "class_histogram_balanced.png",
                         {"original maps": before[1:], "balancing maps": after[1:]}, list(info.class_names[1:]),
                         title=f"nuclei per class in all {len(dataset)} patches: original maps vs one balancing "
                               "map each")
    return {"before": before.tolist(), "after": after.tolist()}


class TinySegNet(torch.nn.Module):
    """A small fully convolutional net with HoVer-Net's np (nucleus / background) and tp (type) heads.

    Args:
        num_types: Type classes counting the background.
        width: Channels of the hidden layers.

    Shapes:
        ``forward(x float32 [N, 3, H, W] in [0, 1]) -> {"np": [N, 2, H, W], "tp": [N, num_types, H, W]}``.
    """

    def __init__(self, num_types: int, width: int = 24) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        c = 3
        for d in (1, 2, 4, 1):
            layers += [torch.nn.Conv2d(c, width, 3, padding=d, dilation=d), torch.nn.BatchNorm2d(width),
                       torch.nn.ReLU(inplace=True)]
            c = width
        self.body = torch.nn.Sequential(*layers)
        self.np_head = torch.nn.Conv2d(width, 2, 1)
        self.tp_head = torch.nn.Conv2d(width, num_types, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(x)
        return {"np": self.np_head(h), "tp": self.tp_head(h)}


def collate_samples(batch: list[Any]) -> dict[str, torch.Tensor]:
    """Collate ``NucleiSample`` items into ``img`` float [N,3,H,W], ``np``/``tp`` long [N,H,W], ``is_synthetic``."""
    img = torch.from_numpy(np.stack([s.image for s in batch])).permute(0, 3, 1, 2).float().div_(255)
    inst = np.stack([s.inst_map for s in batch])
    typ = np.stack([s.type_map for s in batch])
    return {"img": img, "np": torch.from_numpy((inst > 0).astype(np.int64)),
            "tp": torch.from_numpy(typ.astype(np.int64)),
            "is_synthetic": torch.tensor([bool(s.meta.get("is_synthetic", False)) for s in batch])}


def train_step(net: TinySegNet, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One optimiser step of the demo's network on a :func:`collate_samples` batch: cross-entropy on
    the nuclear-pixel (``np``) and type (``tp``) maps, HoVer-Net's two classification branches.

    Args:
        net: The demo's network; returns ``{"np": float [B, 2, H, W], "tp": float [B, C, H, W]}``.
        opt: Its optimiser.
        batch: ``img`` float ``[B, 3, H, W]``, ``np`` / ``tp`` int64 ``[B, H, W]``.

    Returns:
        The loss, a scalar tensor (graph freed).
    """
    out = net(batch["img"])
    loss = (torch.nn.functional.cross_entropy(out["np"], batch["np"])
            + torch.nn.functional.cross_entropy(out["tp"], batch["tp"]))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def downstream_run(dataset: Any, synth: Any, donors: Any, iterations: int, batch_size: int, num_workers: int, seed: int,
                   progress: bool, warmup_patches: int = 16, max_reuse: int = 40) -> dict[str, Any]:
    """Train :class:`TinySegNet` on ``DiffMixDataset(dataset, synth)`` with a real DataLoader.

    The training loop is a plain PyTorch loop that knows nothing of DiffMix; the synthetic share and
    the time the loop waited for data are measured around it.

    On a CPU the tiny SDM makes about 0.6 patches/s while the loop asks for ~70 synthetic items/s,
    so the run blocks for ``warmup_patches`` patches first and lets each be served up to
    ``max_reuse`` times: the paper's regime (a synthetic set made beforehand and reused every
    epoch), with the producer adding fresh patches meanwhile. ``warmup_patches=4, max_reuse=8``
    shows what a CPU user gets without that: a ~5 % synthetic share and a warning per epoch.
    """
    from ..dataset import DiffMixDataset
    from ..labelmaps.sampler import LabelMapSampler, borders_for_patch

    torch.manual_seed(seed)
    net = TinySegNet(dataset.num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    labels = LabelMapSampler("union", donors=donors, num_classes=dataset.num_classes,
                             rare_classes=tuple(dataset.info.rare_classes),
                             **borders_for_patch(dataset[0].image.shape[0]))
    t_warm = time.perf_counter()  # warmup="block": the constructor starts the producer and waits for the patches
    train_set = DiffMixDataset(dataset, synth, mode="union", synthetic_ratio=0.5, seed=seed, warmup="block",
                               warmup_items=warmup_patches, max_reuse=max_reuse, batch_size=4, cache_capacity=64,
                               label_sampler=labels)
    warm_s = time.perf_counter() - t_warm
    bar = None
    try:
        loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=True,
                                             num_workers=num_workers, collate_fn=collate_samples,
                                             persistent_workers=num_workers > 0,
                                             generator=torch.Generator().manual_seed(seed))
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=iterations, desc="downstream", unit="it", dynamic_ncols=True)
        step, epoch, synthetic, seen, wait, losses = 0, 0, 0, 0, 0.0, []
        served_seqs: list[int] = []  # synthetic patches served, over all epochs
        t_start = time.perf_counter()
        while step < iterations:
            train_set.set_epoch(epoch)
            t_wait = time.perf_counter()
            for batch in loader:
                wait += time.perf_counter() - t_wait
                loss = train_step(net, opt, batch)
                step += 1
                synthetic += int(batch["is_synthetic"].sum())
                seen += int(batch["is_synthetic"].numel())
                losses.append(float(loss.detach()))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.3f}", synthetic=f"{synthetic / seen:.0%}")
                if step >= iterations:
                    break
                t_wait = time.perf_counter()
            seqs = train_set._served.numpy()[(train_set._served_epoch == epoch).numpy()]
            served_seqs += [int(q) for q in seqs if q >= 0]
            epoch += 1
        wall = time.perf_counter() - t_start
        prod = train_set.producer
        produced = prod.batches * prod.batch_size if prod is not None else None
    finally:
        if bar is not None:
            bar.close()
        train_set.close()
    return {"iterations": step, "items": seen, "wall_s": wall, "items_per_s": seen / wall,
            "warmup_patches": warmup_patches, "warmup_s": warm_s, "max_reuse": max_reuse,
            "data_wait_share": wait / wall, "synthetic_share": synthetic / max(seen, 1),
            "synthetic_ratio": 0.5, "patches_synthesised": produced,
            "distinct_patches_served": len(set(served_seqs)),
            "mean_reuse": len(served_seqs) / max(1, len(set(served_seqs))),
            "loss_first": float(np.mean(losses[:5])), "loss_last": float(np.mean(losses[-5:]))}
