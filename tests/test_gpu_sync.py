"""A tracked training step on CUDA never waits for the GPU and takes no new device memory.

``torch.cuda.set_sync_debug_mode("error")`` makes every host-device
synchronisation (``.item()``, a device-to-host copy, a stream sync, a host-side
check of a device value) raise, so tracked forward + backward + optimizer steps
run under it prove that the hooks, the covariance update and its self-check queue
work without waiting. The first steps (kernel loading, cuBLAS handles, the
self-check's first use, first allocations) run before the mode is switched on.
Every covariance update path is checked: the fused kernel and the cuBLAS path
(``DELVE_FAST_CUDA_UPDATE=syrk|gemm``).

"No per-call allocation beyond a cached workspace" is checked through the caching
allocator's count of device segments (each one a cudaMalloc): after warm-up,
further tracked steps must not add any. ``add_saturations`` may synchronise (it
reads eigenvalues back) and is not inside the checked region.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import delve_fast
from delve_fast import ops
from delve_fast.testing import require_compiled_device

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

WARMUP_STEPS = 3
CHECKED_STEPS = 5


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 40, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(40 * 16, 96),
        nn.ReLU(),
        nn.Linear(96, 10),
    ).cuda()


def _step(model, opt, x, y):
    opt.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()


@pytest.fixture(params=ops.CUDA_UPDATE_PATHS)
def training(request, tmp_path, compiled, monkeypatch):
    """A tracked model on CUDA, with each covariance update path (DELVE_FAST_CUDA_UPDATE) in turn."""
    require_compiled_device("cuda")
    monkeypatch.setenv(ops.CUDA_UPDATE_ENV_VAR, request.param)
    model = _model()
    # foreach SGD without momentum: its step needs no host-side state.
    opt = torch.optim.SGD(model.parameters(), lr=0.01, foreach=True)
    gen = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(32, 3, 16, 16, device="cuda", generator=gen)
    y = torch.randint(0, 10, (32,), device="cuda", generator=gen)
    tracker = delve_fast.SaturationTracker(
        str(tmp_path / "run"), save_to="csv", modules=model, stats=["lsat", "idim"], device="cuda"
    )
    yield model, opt, x, y, tracker
    torch.cuda.set_sync_debug_mode(0)
    tracker.close()


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_tracked_steps_never_synchronise(training, mode):
    model, opt, x, y, tracker = training
    model.train(mode == "train")
    for _ in range(WARMUP_STEPS):
        _step(model, opt, x, y)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(CHECKED_STEPS):
            _step(model, opt, x, y)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    # The steps were really tracked: every layer folded every batch.
    result = tracker.add_saturations()
    assert result, "the tracker recorded nothing"
    for key, value in result.items():
        if "lsat" in key:
            assert 0.0 <= float(value) <= 100.0, (key, value)


def test_tracked_steps_take_no_new_device_memory(training):
    model, opt, x, y, tracker = training
    for _ in range(WARMUP_STEPS):
        _step(model, opt, x, y)
    torch.cuda.synchronize()
    before = torch.cuda.memory_stats()
    for _ in range(CHECKED_STEPS):
        _step(model, opt, x, y)
    torch.cuda.synchronize()
    after = torch.cuda.memory_stats()
    assert after["segment.all.allocated"] == before["segment.all.allocated"], "new cudaMalloc during tracked steps"
    assert after["reserved_bytes.all.current"] == before["reserved_bytes.all.current"]
    # Nothing leaks either: live bytes return to where they were.
    assert after["allocated_bytes.all.current"] == before["allocated_bytes.all.current"]
