"""SaturationTracker.state_dict / load_state_dict: continue a run mid-epoch, also in another process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from delve_fast import SaturationTracker
from delve_fast.checkpoint import STATE_VERSION

SCRIPT = Path(__file__).parent / "scripts" / "train_target.py"


def _target(*args: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--no-fsync"], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr


def _npy_tree(root: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(root)): np.load(p) for p in sorted(root.rglob("*.npy"))}


def test_two_processes_stop_mid_epoch_and_continue(tmp_path):
    """Process 1 stops after batch 1 of epoch 2 (of 4, 3 batches each) and saves the dict; process 2
    builds the tracker with the same arguments, loads it and feeds the rest. The CSV equals an
    uninterrupted run's byte for byte: the restored float64 states see the same batches in the same
    order with the same ops, so every number is the same by construction."""
    full, split = tmp_path / "full" / "run", tmp_path / "split" / "run"
    ckpt = tmp_path / "ckpt.pt"
    # The uninterrupted run in this process (a third interpreter start would cost seconds).
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import train_target
    finally:
        sys.path.remove(str(SCRIPT.parent))
    threads = torch.get_num_threads()
    with torch.random.fork_rng():
        try:
            assert train_target.main([str(full), "4", "0", "--batches", "3", "--no-fsync"]) == 0
        finally:
            torch.set_num_threads(threads)
    _target(str(split), "4", "0", "--batches", "3", "--stop-after", "2:1", "--checkpoint", str(ckpt))
    # Process 1 wrote epochs 0 and 1 before it stopped.
    assert len((tmp_path / "split" / "run.csv").read_text().splitlines()) == 3
    _target(str(split), "4", "0", "--batches", "3", "--resume-from", str(ckpt))
    assert (tmp_path / "split" / "run.csv").read_text() == (tmp_path / "full" / "run.csv").read_text()
    a, b = _npy_tree(split), _npy_tree(full)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5))


def _tracker(tmp_path, model, **kwargs):
    base = dict(save_to=["csv", "npy"], modules=model, device="cpu", stats=["lsat", "idim", "embed"])
    base.update(kwargs)
    return SaturationTracker(str(tmp_path / "run"), **base)


def test_round_trip_through_torch_save(tmp_path):
    """torch.save / torch.load of the dict, restored into a fresh tracker: the same next results."""
    data = [torch.randn(4, 2, 6, 6, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    model = _model()
    t1 = _tracker(tmp_path / "a", model, log_interval=2, max_samples=7, conv_method="flatten")
    model.train()
    for x in data[:3]:
        model(x)
    t1.add_scalar("loss", 0.25)
    state = t1.state_dict()
    assert state["version"] == STATE_VERSION and state["epoch"] == 0
    torch.save(state, tmp_path / "ckpt.pt")
    model(data[3])
    expected = t1.add_saturations()
    t1.close()

    model2 = _model()
    t2 = _tracker(tmp_path / "b", model2, log_interval=2, max_samples=7, conv_method="flatten")
    t2.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=False))
    model2.train()
    model2(data[3])
    got = t2.add_saturations()
    t2.close()
    assert got.keys() == expected.keys()
    for key in got:
        assert np.array_equal(np.asarray(got[key]), np.asarray(expected[key])), key
    # Equal only because the counters came along: log_interval=2 records passes 2 and 4, and
    # max_samples=7 cuts pass 4 to 3 rows; a fresh counter would skip pass 4 (its pass 1).
    csv_a = (tmp_path / "a" / "run.csv").read_text()
    assert (tmp_path / "b" / "run.csv").read_text() == csv_a and "0.25" in csv_a
    # The npy files too, including the embedded samples that came through the checkpoint.
    a, b = _npy_tree(tmp_path / "a" / "run"), _npy_tree(tmp_path / "b" / "run")
    assert any("embedded-sample" in k for k in a)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_state_dict_is_a_copy(tmp_path):
    model = _model()
    t = _tracker(tmp_path, model)
    model(torch.randn(2, 2, 6, 6))
    state = t.state_dict()
    before = {k: v["state"]["count"] for k, v in state["recorder"]["states"]["train"].items()}
    model(torch.randn(2, 2, 6, 6))
    assert {k: v["state"]["count"] for k, v in state["recorder"]["states"]["train"].items()} == before
    t.close()


def test_load_refuses_other_layers_writers_and_versions(tmp_path):
    model = _model()
    t = _tracker(tmp_path, model)
    state = t.state_dict()
    t.close()
    other = _tracker(tmp_path / "o", model, ignore_layer_names=["0"])
    with pytest.raises(ValueError, match=r"saved but not tracked now: \['0'\]"):
        other.load_state_dict(state)
    other.close()
    csv_only = _tracker(tmp_path / "c", model, save_to="csv")
    with pytest.raises(ValueError, match=r"writers \['CSVWriter', 'NPYWriter'\].*\['CSVWriter'\]"):
        csv_only.load_state_dict(state)
    csv_only.close()
    same = _tracker(tmp_path / "s", model)
    with pytest.raises(ValueError, match="version 99 is not supported"):
        same.load_state_dict({**state, "version": 99})
    with pytest.raises(ValueError, match="not a SaturationTracker state_dict"):
        same.load_state_dict({"count": 1})
    with pytest.raises(TypeError, match="list"):
        same.load_state_dict([])
    same.load_state_dict(state)  # the refusals changed nothing; the real one loads
    same.close()


def test_restore_keeps_delve_attributes_live(tmp_path):
    """tracker.logs / seen_samples stay the recorder's dicts after a restore (user code reads them)."""
    model = _model()
    t = _tracker(tmp_path, model)
    model(torch.randn(2, 2, 6, 6))
    state = t.state_dict()
    t2 = _tracker(tmp_path / "b", _model())
    logs, seen = t2.logs, t2.seen_samples
    t2.load_state_dict(state)
    assert t2.logs is logs and t2.seen_samples is seen
    assert seen["train"] == t.seen_samples["train"] and set(logs["train-covariance-matrix"]) == {"0", "3"}
    t.close()
    t2.close()
