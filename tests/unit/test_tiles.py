"""Whole tiles from their windows (``diffmix_aug.data.tiles``): the inverse of valid-mode extraction."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffmix_aug.data.patches import patch_origins
from diffmix_aug.data.sample import NucleiSample
from diffmix_aug.data.tiles import reassemble, tiles_from_patches


def _tile(rng: np.random.Generator, h: int, w: int) -> NucleiSample:
    inst = np.zeros((h, w), np.int32)
    for k in range(1, 9):
        y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
        inst[y:y + 4, x:x + 4] = k
    typ = np.where(inst > 0, inst % 4 + 1, 0).astype(np.int32)
    return NucleiSample(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), inst, typ)


def _windows(tile: NucleiSample, win: int, step: int):
    origins = patch_origins(tile.inst_map.shape, win, step, mode="valid")
    return [NucleiSample.trusted(tile.image[y:y + win, x:x + win], tile.inst_map[y:y + win, x:x + win],
                                 tile.type_map[y:y + win, x:x + win]) for y, x in origins], origins


@settings(max_examples=25, deadline=None)
@given(h=st.integers(8, 40), w=st.integers(8, 40), win=st.integers(4, 8), seed=st.integers(0, 10**6))
def test_reassemble_inverts_valid_extraction(h, w, win, seed):
    tile = _tile(np.random.default_rng(seed), h, w)
    patches, origins = _windows(tile, win, win)
    out = reassemble(patches, origins, (h, w))
    for a, b in ((out.image, tile.image), (out.inst_map, tile.inst_map), (out.type_map, tile.type_map)):
        np.testing.assert_array_equal(a, b)


def test_reassemble_rejects_disagreeing_overlaps_and_gaps():
    tile = _tile(np.random.default_rng(0), 20, 20)
    patches, origins = _windows(tile, 8, 8)  # the last window overlaps its neighbour by 4 px
    shuffled = origins[::-1]
    with pytest.raises(ValueError, match="disagrees"):
        reassemble(patches, shuffled, (20, 20))
    with pytest.raises(ValueError, match="covered by no window"):
        reassemble(patches[:-1], origins[:-1], (20, 20))
    with pytest.raises(ValueError, match="leaves the tile"):
        reassemble(patches, origins + 20, (20, 20))
    with pytest.raises(ValueError, match="one \\(y, x\\) per patch"):
        reassemble(patches, origins[:2], (20, 20))


class _Named:
    def __init__(self, items, names):
        self.items, self.names = items, names

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def item_names(self):
        return self.names


def test_tiles_from_patches_groups_by_name_in_any_order():
    rng = np.random.default_rng(1)
    tiles = [_tile(rng, 20, 20) for _ in range(2)]
    items, names = [], []
    for t, name in zip(tiles, ("train_3", "train_12")):
        patches, _ = _windows(t, 8, 8)
        for j, p in enumerate(patches):
            items.append(p)
            names.append(f"{name}_{j:03d}")
    order = rng.permutation(len(items))
    ds = _Named([items[i] for i in order], [names[i] for i in order])
    out, out_names = tiles_from_patches(ds, (20, 20))
    assert sorted(out_names) == ["train_12", "train_3"]
    for t, name in zip(tiles, ("train_3", "train_12")):
        np.testing.assert_array_equal(out[out_names.index(name)].inst_map, t.inst_map)
    with pytest.raises(ValueError, match="expected 0..8"):
        tiles_from_patches(_Named(items[:8], names[:8]), (20, 20))
    with pytest.raises(ValueError, match="item names"):
        tiles_from_patches(_Named(items, None), (20, 20))
