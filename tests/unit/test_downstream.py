"""Downstream harness: HoVer-Net targets vs a plain reference, losses, post-processing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.downstream.targets import crop_to_shape, fix_mirror_padding, gen_targets


def _plain_fix_mirror(ann):
    from scipy import ndimage

    ann = ann.astype(np.int32).copy()
    current_max = int(ann.max())
    for inst_id in [i for i in np.unique(ann) if i != 0]:
        pieces = ndimage.label(ann == inst_id)[0]
        pieces[pieces > 1] += current_max
        ann[pieces > 1] = pieces[pieces > 1]
        current_max = int(ann.max())
    return ann


def _plain_gen_targets(ann, crop_shape):
    """Line-by-line HoVer-Net logic with full-image masks; the box is padded so it never clips."""
    from scipy import ndimage

    pad = 3
    fixed = np.pad(_plain_fix_mirror(ann), pad)
    h0 = int((ann.shape[0] - crop_shape[0]) * 0.5) + pad
    w0 = int((ann.shape[1] - crop_shape[1]) * 0.5) + pad
    crop = fixed[h0:h0 + crop_shape[0], w0:w0 + crop_shape[1]]
    x_map = np.zeros(fixed.shape, np.float32)
    y_map = np.zeros(fixed.shape, np.float32)
    for inst_id in np.unique(crop):
        if inst_id == 0 or (crop == inst_id).sum() < 30:
            continue
        m = (fixed == inst_id).astype(np.uint8)
        rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
        r0, r1, c0, c1 = rows[0] - 2, rows[-1] + 1 + 2, cols[0] - 2, cols[-1] + 1 + 2
        m = m[r0:r1, c0:c1]
        com = ndimage.center_of_mass(m)
        cy, cx = int(com[0] + 0.5), int(com[1] + 0.5)
        xx, yy = np.meshgrid(np.arange(1, m.shape[1] + 1) - cx, np.arange(1, m.shape[0] + 1) - cy)
        xx[m == 0] = 0
        yy[m == 0] = 0
        xx, yy = xx.astype(np.float32), yy.astype(np.float32)
        for a in (xx, yy):
            if a.min() < 0:
                a[a < 0] /= -a[a < 0].min()
            if a.max() > 0:
                a[a > 0] /= a[a > 0].max()
        x_map[r0:r1, c0:c1][m > 0] = xx[m > 0]
        y_map[r0:r1, c0:c1][m > 0] = yy[m > 0]
    hv = np.dstack([x_map, y_map])[pad:-pad, pad:-pad]
    return crop_to_shape(hv, crop_shape), crop_to_shape((ann > 0).astype(np.int32), crop_shape)


def _random_inst_map(rng, size, n):
    """Random discs and rectangles, overlapping (later ones win), some ids repeated (mirror-like)."""
    inst = np.zeros((size, size), np.int32)
    yy, xx = np.mgrid[:size, :size]
    for k in range(1, n + 1):
        cy, cx = rng.integers(0, size, 2)
        r = rng.integers(2, 9)
        inst[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    if n >= 2:  # duplicate an id as a separate piece
        inst[0:4, size - 6:size] = 1
    return inst


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(0, 12), crop=st.sampled_from([(40, 40), (31, 27), (48, 48)]))
def test_gen_targets_matches_plain_reference(seed, n, crop):
    inst = _random_inst_map(np.random.default_rng(seed), 48, n)
    out = gen_targets(inst, crop)
    hv_ref, np_ref = _plain_gen_targets(inst, crop)
    assert out["np_map"].dtype == np.int32 and out["hv_map"].dtype == np.float32
    assert out["hv_map"].shape == crop + (2,)
    np.testing.assert_array_equal(out["np_map"], np_ref)
    np.testing.assert_allclose(out["hv_map"], hv_ref, atol=1e-6)
    assert out["hv_map"].min() >= -1 and out["hv_map"].max() <= 1


def test_fix_mirror_padding_matches_plain(rng):
    inst = _random_inst_map(rng, 64, 15)
    inst[60:64, 0:5] = 3
    np.testing.assert_array_equal(fix_mirror_padding(inst), _plain_fix_mirror(inst))


def test_hv_map_single_disc_spans_minus_one_to_one():
    yy, xx = np.mgrid[:32, :32]
    inst = ((yy - 16) ** 2 + (xx - 16) ** 2 <= 36).astype(np.int32)
    hv = gen_targets(inst, (32, 32))["hv_map"]
    for c in range(2):
        assert hv[..., c].min() == -1 and hv[..., c].max() == 1
    assert (hv[inst == 0] == 0).all()
    # x channel grows left to right, y channel top to bottom
    assert hv[16, 20, 0] > 0 > hv[16, 12, 0] and hv[20, 16, 1] > 0 > hv[12, 16, 1]


def test_small_instance_inside_crop_keeps_np_but_no_hv():
    inst = np.zeros((20, 20), np.int32)
    inst[5:10, 5:10] = 1  # 25 px < 30
    out = gen_targets(inst, (20, 20))
    assert out["np_map"].sum() == 25 and not out["hv_map"].any()


def test_crop_shape_errors():
    with pytest.raises(ValueError, match="crop_shape"):
        gen_targets(np.zeros((8, 8), np.int32), (10, 10))
    with pytest.raises(TypeError, match="inst_map"):
        gen_targets(np.zeros((8, 8), np.float32), (4, 4))


# ---------------------------------------------------------------- losses, network, post-processing


def _toy_batch(n=2, size=32, seed=0):
    from diffmix_aug.data.toy import make_toy_dataset

    ds = make_toy_dataset(n, size, seed)
    return [ds[i] for i in range(n)], ds.num_classes


def test_sobel_kernels_orientation():
    import torch

    from benchmarks.downstream.losses import msge_loss, sobel_kernels

    kx, ky = sobel_kernels(5)
    assert kx.shape == (5, 5) and torch.allclose(kx, ky.T)
    assert kx[2, 4] > 0 and kx[2, 0] < 0 and kx[0, 2] == 0  # x grows along columns
    ramp = torch.arange(8.0).view(1, 1, 8).expand(1, 8, 8)  # x-map increasing along x
    hv = torch.stack([ramp, torch.zeros_like(ramp)], -1)
    focus = torch.zeros(1, 8, 8)
    focus[:, 2:6, 2:6] = 1
    assert float(msge_loss(hv, torch.zeros_like(hv), focus)) > 0
    assert abs(float(msge_loss(hv, torch.zeros_like(hv), focus, transposed_kernels=True))) < 1e-9


def test_loss_finite_and_decreasing():
    import torch

    from benchmarks.downstream.losses import hovernet_loss
    from benchmarks.downstream.net import SmallHoVerNet
    from benchmarks.downstream.train import prepare_item

    samples, k = _toy_batch()
    items = [prepare_item(s, None) for s in samples]
    img = torch.from_numpy(np.stack([it["img"] for it in items])).permute(0, 3, 1, 2).float()
    npm, hv, tp = (torch.from_numpy(np.stack([it[key] for it in items])) for key in ("np_map", "hv_map", "tp_map"))
    torch.manual_seed(0)
    net = SmallHoVerNet(k, width=4, depth=2)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss, parts = hovernet_loss(net(img), npm, hv, tp)
        assert torch.isfinite(loss) and set(parts) == {"np_bce", "np_dice", "hv_mse", "hv_msge", "tp_bce", "tp_dice"}
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]


def test_network_shapes_and_bad_input():
    import torch

    from benchmarks.downstream.net import SmallHoVerNet, build_network

    net = SmallHoVerNet(5, width=4, depth=2)
    out = net(torch.zeros(2, 3, 16, 16))
    assert out["np"].shape == (2, 2, 16, 16) and out["hv"].shape == (2, 2, 16, 16) and out["tp"].shape == (2, 5, 16, 16)
    assert out["hv"].abs().max() <= 1
    with pytest.raises(ValueError, match="divisible"):
        net(torch.zeros(1, 3, 18, 16))
    with pytest.raises(ValueError, match="name"):
        build_network("resnet", 5)


def test_postproc_recovers_instances_from_perfect_targets():
    from benchmarks.downstream.postproc import TOY_POSTPROC, process
    from diffmix_aug.data.toy import make_toy_dataset
    from diffmix_aug.metrics import classification_stats, panoptic_quality

    ds = make_toy_dataset(6, 64, 1)
    pqs, true_pts, pred_pts = [], [], []
    for i in range(len(ds)):
        s = ds[i]
        tg = gen_targets(s.inst_map, s.inst_map.shape)
        tp_prob = np.eye(ds.num_classes, dtype=np.float32)[s.type_map]
        out = process(tg["np_map"].astype(np.float32), tg["hv_map"], tp_prob, **TOY_POSTPROC)
        pqs.append(panoptic_quality(s.inst_map, out["inst_map"])[2])
        true_pts.append({"inst_centroid": s.info.centroids, "inst_type": s.info.types})
        pred_pts.append({"inst_centroid": out["inst_centroid"], "inst_type": out["inst_type"]})
    assert np.mean(pqs) > 0.9
    stats = classification_stats(true_pts, pred_pts)
    assert stats["accuracy"] > 0.95 and stats["f1_detection"] > 0.9


def test_instance_types_majority_and_background_rule():
    from benchmarks.downstream.postproc import instance_types

    inst = np.zeros((4, 6), np.int32)
    inst[:, :3], inst[:, 3:] = 2, 5
    typ = np.zeros((4, 6), np.int32)
    typ[:3, :3] = 3  # instance 2: 9 px type 3, 3 px background
    typ[3, 3:] = 4  # instance 5: 9 px background, 3 px type 4 -> second most frequent wins
    ids, types, cen = instance_types(inst, typ)
    assert ids.tolist() == [2, 5] and types.tolist() == [3, 4]
    np.testing.assert_allclose(cen, [[1.0, 1.5], [4.0, 1.5]])


def test_train_and_evaluate_smoke():
    from benchmarks.downstream.train import HarnessConfig, evaluate, train

    samples, k = _toy_batch(n=4, size=32)
    cfg = HarnessConfig(iterations=3, batch_size=2, width=4, depth=2)
    model, hist = train(samples, k, cfg, progress=False)
    assert len(hist["loss"]) == 3 and hist["samples"] == 6 and all(np.isfinite(hist["loss"]))
    res = evaluate(model, samples[:2], cfg, type_ids=[1, 2, 3, 4])
    for key in ("dice", "aji", "aji_plus", "dq", "sq", "pq", "f1_detection"):
        assert 0.0 <= res[key] <= 1.0
    assert set(res["f1_per_type"]) == {1, 2, 3, 4} and res["n_images"] == 2
    # precomputed HoVer-Net dicts train through the same loop
    from benchmarks.downstream.train import prepare_item

    dicts = [prepare_item(s, None) for s in samples]
    _, hist2 = train(dicts, k, cfg, progress=False)
    assert len(hist2["loss"]) == 3
