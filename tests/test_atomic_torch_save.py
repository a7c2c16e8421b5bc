"""``atomic_torch_save``: reproducible bytes, nothing half-written, nothing left behind."""

from __future__ import annotations

import zipfile

import pytest
import torch

from monai_probunet.io_utils import atomic_torch_save


def test_two_saves_of_the_same_state_give_identical_bytes(tmp_path):
    torch.manual_seed(0)
    state = torch.nn.Conv2d(2, 3, 3).state_dict()
    first = atomic_torch_save(state, tmp_path / "a" / "model.pt").read_bytes()
    second = atomic_torch_save(state, tmp_path / "b" / "model.pt").read_bytes()
    again = atomic_torch_save(state, tmp_path / "a" / "model.pt").read_bytes()  # replaces the first file
    assert first == second == again
    torch.save(state, tmp_path / "model.pt")
    assert first == (tmp_path / "model.pt").read_bytes()  # what a plain torch.save to the final name writes
    names = zipfile.ZipFile(tmp_path / "a" / "model.pt").namelist()
    assert names and all(n.startswith("model/") for n in names), names  # not the temporary name
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["model.pt"]  # no temporary folder left
    loaded = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


class _Unsaveable:
    def __reduce__(self):
        raise RuntimeError("cannot be saved")


def test_a_failed_save_leaves_the_previous_file(tmp_path):
    path = atomic_torch_save({"w": torch.ones(3)}, tmp_path / "checkpoint.pt")
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="cannot be saved"):
        atomic_torch_save({"w": torch.zeros(3), "f": _Unsaveable()}, path)  # fails after writing has begun
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
