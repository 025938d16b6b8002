"""Crash safety of the writers: SIGKILL at random moments, then resume.

A subprocess (``tests/scripts/train_target.py``) trains a tiny model and
saves every epoch with the csv and npy writers; the test kills it with
SIGKILL at random (seeded) moments. After every kill every file must load,
the npy folders must hold the same committed epochs, the CSV and the npy
folders must agree on the epochs both hold, and the next run, started with
``initial_epoch`` = the CSV's row count, must continue without duplicated or
missing epochs. The finished run must equal an uninterrupted one exactly:
each epoch's data is seeded by its number and the model is fixed, so the
numbers are a deterministic function of the epoch (same ops, same order,
same data, one thread).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from delve_fast import SaturationTracker
from delve_fast.writers import CSVWriter, NPYWriter
from delve_fast.writers._atomic import atomic_path, atomic_write, is_temporary, remove_leftovers
from delve_fast.writers.npy_writer import read_npy_state

SCRIPT = Path(__file__).parent / "scripts" / "train_target.py"
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")


class _Server:
    """The target's ``--serve`` process: one interpreter start, one forked child per run."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self._line() == "serving"

    def _line(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=60)
            pytest.fail(f"the target server ended (rc={self.proc.returncode}); its stderr is in the test output")
        return line.strip()

    def start(self, savefile: Path, epochs: int, initial_epoch: int, fsync: bool) -> int | None:
        """Fork a run; its pid once it is ready, or None if it ended first (then its exit code must be 0)."""
        argv = [str(savefile), str(epochs), str(initial_epoch)] + ([] if fsync else ["--no-fsync"])
        self.proc.stdin.write(json.dumps(argv) + "\n")
        self.proc.stdin.flush()
        words = self._line().split()
        if words[0] == "exit":
            assert words[2] == "0", f"the run failed with exit code {words[2]}"
            return None
        assert words[0] == "ready", words
        return int(words[1])

    def wait(self, pid: int) -> int:
        words = self._line().split()
        assert words[:2] == ["exit", str(pid)], words
        return int(words[2])

    def run_to_end(self, savefile: Path, epochs: int, initial_epoch: int, fsync: bool) -> None:
        pid = self.start(savefile, epochs, initial_epoch, fsync)
        if pid is not None:
            assert self.wait(pid) == 0

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture
def server():
    srv = _Server()
    yield srv
    srv.close()


def _temporaries(root: Path) -> set[Path]:
    return {Path(d) / f for d, _, files in os.walk(root) for f in files if is_temporary(f)}


def _npy_files(npy_root: Path) -> dict[str, dict[int, Path]]:
    found: dict[str, dict[int, Path]] = {}
    for folder in sorted(p for p in npy_root.iterdir() if p.is_dir()):
        for f in folder.iterdir():
            if f.name.startswith(folder.name + "_epoch") and f.suffix == ".npy":
                found.setdefault(folder.name, {})[int(f.stem[len(folder.name) + len("_epoch") :])] = f
    return found


def _check_after_kill(savefile: Path, earlier: pd.DataFrame | None) -> pd.DataFrame | None:
    """Every file loads; the folders agree on their committed epochs and with the CSV.

    ``earlier`` is the CSV after the previous kill: its rows must still be there, unchanged
    (pandas writes floats as repr and parses them back exactly, so equal means bit-identical).
    Returns the CSV now.
    """
    csv = savefile.with_name(savefile.name + ".csv")
    df = pd.read_csv(csv, sep=";", index_col=0) if csv.exists() else None
    rows = 0 if df is None else len(df)
    if df is not None:
        assert list(df.index) == list(range(rows))
    if earlier is not None:
        assert rows >= len(earlier)
        pd.testing.assert_frame_equal(df.iloc[: len(earlier)], earlier, check_exact=True)
    if not (savefile / "epoch_counter.json").exists():
        assert rows == 0, "a CSV row without a committed npy epoch"
        return df
    committed, counter = read_npy_state(str(savefile))
    # Commit order: npy files, then the npy record, then the CSV.
    assert rows <= committed <= rows + 1, (rows, committed)
    files = _npy_files(savefile)
    for name, by_epoch in files.items():
        assert set(range(committed)) <= set(by_epoch), f"{name} lacks committed epochs"
        assert counter.get(name, -1) == committed - 1
        for path in by_epoch.values():
            stat = path.stat()
            if _VERIFIED.get(path) != (stat.st_ino, stat.st_mtime_ns):
                np.load(path)  # every file loads, committed or not
                _VERIFIED[path] = (stat.st_ino, stat.st_mtime_ns)
    if committed:
        assert len(files) == _NAMES, "every value is logged every epoch: all folders exist"
    return df


#: Values the target logs every epoch: loss, and train/eval x (lsat, idim, trc, cov) x 2 layers.
_NAMES = 17
#: path -> (inode, mtime) of npy files already loaded (an atomic replacement gives a rewritten
#: file a new inode, so a changed file is loaded again).
_VERIFIED: dict[Path, tuple[int, int]] = {}


def _kill_and_resume(server: _Server, tmp_path: Path, kills: int, fsync: bool, window_s: float, seed: int) -> None:
    """Kill runs that would never finish on their own, then finish a few more epochs and compare."""
    savefile = tmp_path / "killed" / "run"
    rng = random.Random(seed)
    leftovers: set[Path] = set()
    df = None
    for _ in range(kills):
        df = _check_after_kill(savefile, df)
        pid = server.start(savefile, 10**6, 0 if df is None else len(df), fsync)
        assert pid is not None
        # The new run removed the temporary files the last kill left behind.
        assert not (leftovers & _temporaries(tmp_path / "killed"))
        time.sleep(rng.uniform(0.0, window_s))
        os.kill(pid, signal.SIGKILL)
        assert server.wait(pid) == -signal.SIGKILL
        leftovers = _temporaries(tmp_path / "killed")
    df = _check_after_kill(savefile, df)
    rows = 0 if df is None else len(df)
    epochs = rows + 3
    server.run_to_end(savefile, epochs, rows, fsync)
    reference = tmp_path / "ref" / "run"
    server.run_to_end(reference, epochs, 0, fsync=False)
    # The resumed run equals an uninterrupted one: same CSV text, same files, no leftovers.
    assert savefile.with_name("run.csv").read_text() == reference.with_name("run.csv").read_text()
    files, ref_files = _npy_files(savefile), _npy_files(reference)
    assert {n: sorted(e) for n, e in files.items()} == {n: list(range(epochs)) for n in ref_files}
    assert len(files) == _NAMES
    for name, by_epoch in files.items():
        for epoch, path in by_epoch.items():
            assert np.array_equal(np.load(path), np.load(ref_files[name][epoch])), (name, epoch)
    assert json.loads((savefile / "epoch_counter.json").read_text())["epochs"] == epochs
    assert not _temporaries(tmp_path / "killed")


def test_sigkill_while_saving_every_epoch(server, tmp_path):
    """20 kills at random moments of runs that save every epoch (without fsync: a kill does not need it)."""
    _kill_and_resume(server, tmp_path, kills=20, fsync=False, window_s=0.25, seed=0)


@pytest.mark.slow
def test_sigkill_fifty_times_with_fsync(server, tmp_path):
    _kill_and_resume(server, tmp_path, kills=50, fsync=True, window_s=1.0, seed=1)


# --------------------------------------------------------------- in process
def test_atomic_write_failure_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write(str(target), lambda fh: fh.write(b"old"))

    def half(fh):
        fh.write(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(str(target), half)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]
    with atomic_path(str(target), fsync=False) as tmp:
        assert Path(tmp).parent == tmp_path and is_temporary(Path(tmp).name)
        Path(tmp).write_bytes(b"new")
    assert target.read_bytes() == b"new"


def test_leftover_temporaries_are_removed_at_writer_start(tmp_path):
    run = tmp_path / "run"
    (run / "_x").mkdir(parents=True)
    stale = [
        tmp_path / ".run.csv.0123456789ab.tmp",
        tmp_path / "run.csv.tmp-4242",  # delve_fast 0.1's CSV temporary
        run / "_x" / "._x_epoch3.npy.a1b2c3d4e5f6.tmp",
        run / ".epoch_counter.json.ffffffffffff.tmp",
        tmp_path / ".run.zip.000000000000.tmp",
    ]
    foreign = [tmp_path / ".other.csv.0123456789ab.tmp", tmp_path / "notes.tmp"]
    for path in stale + foreign:
        path.write_bytes(b"x")
    CSVWriter(str(run))
    NPYWriter(str(run))
    assert [p for p in stale if p.exists()] == []
    assert all(p.exists() for p in foreign)  # another writer's or the user's files stay
    assert remove_leftovers(str(tmp_path / "absent")) == []


def test_npy_epoch_is_committed_by_the_record(tmp_path, monkeypatch):
    """A crash after some files of an epoch: the record still says the old count, resume removes the rest."""
    root = tmp_path / "run"
    w = NPYWriter(str(root), fsync=False)
    w.add_scalars("", {"a": 1.0, "b": 2.0})
    w.save()
    w.add_scalars("", {"a": 3.0, "b": 4.0})
    real_save = np.save
    calls = []

    def dying_save(fh, value, *args, **kwargs):
        calls.append(value)
        if len(calls) == 2:
            raise KeyboardInterrupt  # stands in for the kill, after the first file of the epoch
        real_save(fh, value, *args, **kwargs)

    monkeypatch.setattr(np, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        w.save()
    monkeypatch.undo()
    assert read_npy_state(str(root))[0] == 1
    assert (root / "_a" / "_a_epoch1.npy").exists() and not (root / "_b" / "_b_epoch1.npy").exists()
    assert not _temporaries(root)
    NPYWriter(str(root)).resume_from_saved_state(1)
    assert sorted(p.name for p in (root / "_a").iterdir()) == ["_a_epoch0.npy"]


class _FailingResume(CSVWriter):
    def resume_from_saved_state(self, initial_epoch: int) -> None:
        raise OSError("cannot read the saved state")


@pytest.mark.filterwarnings("ignore:CSVWriter cannot resume:RuntimeWarning")
@pytest.mark.parametrize("how", ["corrupt_counter", "writer_raises", "bad_save_to"])
def test_constructor_failure_leaves_no_hook(tmp_path, how):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    kwargs = {"save_to": ["csv", "npy"], "initial_epoch": 2}
    if how == "corrupt_counter":
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "epoch_counter.pkl").write_bytes(b"")  # what a killed pickle.dump leaves
        expected = (ValueError, "epoch_counter.pkl")
    elif how == "writer_raises":
        kwargs["save_to"] = _FailingResume(str(tmp_path / "run"))
        expected = (OSError, "cannot read the saved state")
    else:
        kwargs["save_to"] = ["csv", "nonsense"]
        expected = (ValueError, "nonsense")
    with pytest.raises(expected[0], match=expected[1]):
        SaturationTracker(str(tmp_path / "run"), modules=model, device="cpu", **kwargs)
    assert all(not m._forward_hooks for m in model.modules())
    model(torch.randn(2, 3))  # still runs, untouched
