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


_KILLED_WHILE_SAVING = """
import os, signal, sys
from pathlib import Path
from monai_probunet.io_utils import atomic_torch_save, atomic_write

def killed(*args):  # SIGKILL in the middle of a write: no clean-up runs
    os.kill(os.getpid(), signal.SIGKILL)

class KilledHere:
    __reduce__ = killed

if sys.argv[1] == "text":
    atomic_write(sys.argv[2], lambda tmp: (Path(tmp).write_text("{"), killed()))
else:
    atomic_torch_save({"w": list(range(1000)), "f": KilledHere()}, sys.argv[2])
"""


def test_what_a_killed_save_leaves_is_removed_by_the_next_save_there(tmp_path):
    """A process killed while saving a checkpoint (SIGKILL) leaves its temporary folder beside it, one killed while
    writing a file its temporary file; the next process to save into that folder removes them, and keeps another
    running process's temporary and the user's own files."""
    import signal
    import subprocess
    import sys

    for kind, name in (("torch", "checkpoint.pt"), ("text", "summary.json")):  # the second run removes the first's
        r = subprocess.run([sys.executable, "-c", _KILLED_WHILE_SAVING, kind, str(tmp_path / name)], check=False)
        assert r.returncode == -signal.SIGKILL
        left = [p.name for p in tmp_path.iterdir()]
        assert len(left) == 1 and left[0].startswith(f".{name}.probunet-") and left[0].endswith(".tmp"), left
    kept = [".checkpoint.pt.probunet-1-abcdefgh.tmp", ".checkpoint.pt.tmp", "notes.probunet-2-x.tmp",
            ".notes.tmp-99999999"]
    for name in kept:  # pid 1 runs: another process's; the others are not a temporary's name: the user's
        (tmp_path / name).write_text("keep")
    atomic_torch_save({"w": torch.ones(3)}, tmp_path / "model.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, "model.pt"])
