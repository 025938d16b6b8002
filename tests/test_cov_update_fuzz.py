"""Randomised check of the compiled covariance update against NumPy.

Each case draws a layout (NCHW, channels_last, Linear, tokens, a strided
channel slice, a transposed token matrix), a dtype, a feature count around the
kernel's block edges, a thread count and a split of the batch into two
updates, then compares both precisions with ``np.cov``. The seed is fixed, so a
failure names a reproducible case.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from delve_fast import ops
from delve_fast._reference import as_channel_view
from delve_fast.testing import fresh_state, np_mean_cov, samples_f64

FEATURES = [1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 48, 63, 64, 65, 100, 127, 128, 129, 200, 255, 257, 300, 513]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LAYOUTS = ["nchw", "channels_last", "linear", "tokens", "strided", "transposed"]  # see _draw_view


def _draw_view(rng: random.Random) -> torch.Tensor:
    """One random ``(N, C, S)`` batch view, never copied into a standard layout."""
    layout, c, dtype = rng.choice(LAYOUTS), rng.choice(FEATURES), rng.choice(DTYPES)
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    offset, spread = rng.uniform(-5, 5), rng.uniform(0.1, 3)
    if layout in ("nchw", "channels_last"):
        x = torch.randn(rng.randint(1, 24), c, rng.randint(1, 20), rng.randint(1, 20), generator=gen)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        return as_channel_view((x * spread + offset).to(dtype))
    if layout == "linear":
        return (torch.randn(rng.randint(2, 2000), c, generator=gen) * spread + offset).to(dtype).unsqueeze(-1)
    if layout == "tokens":
        x = torch.randn(rng.randint(1, 16), rng.randint(1, 80), c, generator=gen) * spread + offset
        return x.to(dtype).reshape(-1, c).unsqueeze(-1)
    if layout == "strided":
        x = torch.randn(rng.randint(1, 16), 2 * c, rng.randint(1, 30), generator=gen) * spread + offset
        return x.to(dtype)[:, ::2, :]
    # A (features, samples) matrix seen as (samples, features): no feature is contiguous.
    x = torch.randn(c, rng.randint(2, 400), generator=gen) * spread + offset
    return x.to(dtype).t().unsqueeze(-1)


# One seed runs in the default suite (about 2 s); the rest with -m slow.
@pytest.mark.parametrize("seed", [0, *(pytest.param(s, marks=pytest.mark.slow) for s in range(1, 4))])
def test_random_cases_match_numpy(compiled, seed):  # noqa: ARG001 (fail if the build is broken)
    rng = random.Random(seed)
    old_threads = torch.get_num_threads()
    try:
        for _ in range(150):
            torch.set_num_threads(rng.choice([1, 2, 3, 4]))
            view = _draw_view(rng)
            c = view.shape[1]
            rows = samples_f64(view)
            if rows.shape[0] < 2:
                continue
            split = rng.randint(1, view.shape[0])
            parts = [p for p in (view[:split], view[split:]) if p.shape[0] > 0]
            ref_mean, ref = np_mean_cov(rows)
            scale = np.sqrt(np.outer(np.diag(ref), np.diag(ref))) + 1e-300
            for precision, limit in (("double", 1e-10), ("mixed", 1e-4)):
                mean, m2, counts = fresh_state(c)
                for part in parts:
                    ops.cov_update_(mean, m2, counts, part, backend="cpp", precision=precision)
                count = int(counts[0])
                case = f"{tuple(view.shape)} strides {view.stride()} {view.dtype} {precision}"
                err = float(np.max(np.abs((m2 / count).numpy() - ref) / scale))
                assert err <= limit, f"{case}: relative error {err:.3g} > {limit}"
                assert torch.equal(m2, m2.T), f"{case}: state not symmetric"
                np.testing.assert_allclose(mean.numpy(), ref_mean, rtol=1e-9, atol=1e-9 * (1 + np.abs(rows).max()))
    finally:
        torch.set_num_threads(old_threads)
