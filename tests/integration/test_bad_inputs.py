"""Issue 32, cases 6, 7, 12, 13: bad inputs refused at construction or at the first item, with a
message that names the field, the expected and the received value, and the fix."""

from __future__ import annotations

import numpy as np
import pytest
from diffmix_helpers import DictDataset, NoiseSynth, TupleDataset, tiny_synthesizer, toy

from diffmix_aug import DiffMixDataset
from diffmix_aug.adapters.hovernet import HoVerNetAdapter


class TypesFrom(DictDataset):
    """Dict items whose nuclei of item ``at`` (every item: None) have class ``value``."""

    def __init__(self, value: int, at: int | None = None):
        super().__init__(8)
        self.value, self.at = value, at

    def __getitem__(self, i):
        d = super().__getitem__(i)
        if self.at is None or i == self.at:
            t = d["type_map"].clone()
            t[t > 0] = self.value
            d["type_map"] = t
        return d


class TupleTypes(TupleDataset):
    def __getitem__(self, i):
        t, im, inst = super().__getitem__(i)
        return (np.where(t > 0, 28, 0), im, inst)


@pytest.mark.parametrize("make", [lambda: (TypesFrom(28), {}), lambda: (TupleTypes(8), {"keys": (1, 2, 0)})])
def test_class_ids_beyond_num_classes_are_refused_at_construction(make):
    """Case 6: types up to 28 in a 5-class set-up were served by dict and tuple bases."""
    base, kw = make()
    with pytest.raises(ValueError) as err:
        DiffMixDataset(base, NoiseSynth(), mode="enlarge", num_classes=5, start=False, **kw)
    msg = str(err.value)
    assert "`type_map` of base item 0" in msg and "must be in 0..4 (num_classes=5" in msg and "got 0..28" in msg
    assert "merge the dataset's classes" in msg


def test_class_ids_beyond_num_classes_in_a_later_item_fail_its_synthesis_with_the_item_named():
    """Only item 0 is read at construction; item 5's class 28 is refused when its label map is drawn
    (a ProducerError naming item 5), never rendered as another class."""
    from diffmix_aug.producer import ProducerError

    with DiffMixDataset(TypesFrom(28, at=5), NoiseSynth(), mode="enlarge", num_classes=5, synthetic_ratio=1.0,
                        cache_capacity=8, batch_size=8, warmup="none", label_workers=0, seed=0,
                        cooperative=True, cooperative_every=1) as ds, \
            pytest.raises(ProducerError, match=r"`type_map` of item 5 classes must be in 0\.\.4.*got 0\.\.28"):
        for _ in range(3):
            for i in range(len(ds)):
                ds[i]


def test_patch_size_not_divisible_by_the_sdm_is_refused_at_construction():
    """Case 12: patch_size=50 with a 3-level SDM failed at the first item inside the producer."""
    synth = tiny_synthesizer()
    assert synth.size_multiple == 4
    with pytest.raises(ValueError) as err:
        DiffMixDataset(toy(8), synth, mode="enlarge", patch_size=50, start=False)
    msg = str(err.value)
    assert "`patch_size` must be divisible by 4 for this SDM" in msg and "got (50, 50)" in msg
    assert "patch_size=(48, 48)" in msg and "(52, 52)" in msg
    DiffMixDataset(toy(8), synth, mode="enlarge", patch_size=32, start=False).close()


@pytest.mark.parametrize("index", ["a", 1.5, None])
def test_a_non_integer_index_is_refused_by_name(index):
    """Case 13: ds['a'] gave int()'s bare "invalid literal"."""
    with DiffMixDataset(DictDataset(8), NoiseSynth(), mode="enlarge", start=False) as ds, \
            pytest.raises(TypeError, match=r"DiffMixDataset index must be an int \(0\.\.7\), got"):
        ds[index]


def _hover_base(path):
    class Base:  # the attributes the HoVer-Net adapter reads
        info_list = [str(path)]
        input_shape = mask_shape = (16, 16)
        with_type = True
        target_gen_kwargs: dict = {}

        @staticmethod
        def target_gen_func(inst, shape, **kw):
            return {"np_map": (inst > 0).astype(np.int32)}

        def setup_augmentor(self, worker_id, seed):
            pass

    return Base()


@pytest.mark.parametrize(("ids", "words"), [
    ((1, 2**32 + 1), ["inst channel values must fit in int32", "4294967297", "remap_label"]),
    ((1, -3), ["inst channel must be >= 0", "minimum -3"]),
])
def test_the_hovernet_adapter_reads_npy_patches_through_the_one_validated_reader(tmp_path, ids, words):
    """Case 7: ids 1 and 2**32+1 became one nucleus with two types through the adapter, while
    read_hovernet_npy refused the file. Now both refuse it the same way, naming the file."""
    a = np.zeros((16, 16, 5), np.int64)
    a[..., :3] = 100
    a[2:5, 2:5, 3], a[8:11, 8:11, 3] = ids
    a[2:5, 2:5, 4], a[8:11, 8:11, 4] = 1, 2
    path = tmp_path / "p.npy"
    np.save(path, a)
    with pytest.raises(ValueError) as err:
        HoVerNetAdapter().read_raw(_hover_base(path), 0)
    from diffmix_aug.data.readers import read_hovernet_npy

    with pytest.raises(ValueError) as direct:
        read_hovernet_npy(path)
    for w in [str(path), *words]:
        assert w in str(err.value), (w, str(err.value))
    assert str(err.value) == str(direct.value)


def test_a_pickled_npy_behind_a_hovernet_base_names_the_file(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=rf"{path}: not a readable \.npy file.*allow_pickle=False"):
        HoVerNetAdapter().read_raw(_hover_base(path), 0)
