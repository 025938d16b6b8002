"""Every CPU build of the Gram kernel (portable, AVX2, AVX-512) against NumPy.

The best build the CPU supports is chosen once per process, so each lower
build is run in a subprocess with ``DELVE_FAST_CPU_ISA`` set. The shapes cover
both thread splits, partial feature blocks, odd block counts (the float kernel
takes row blocks in pairs), NCHW and channels_last, in float64 and mixed precision.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, sys
import numpy as np
import torch
from delve_fast import _C, ops
from delve_fast._reference import as_channel_view

torch.set_num_threads(2)
worst = {}
cases = [((8, 24, 9, 9), False), ((4, 70, 6, 6), True), ((700, 130), False), ((3, 257, 10, 20), False),
         ((64, 48, 4, 4), True)]
for shape, channels_last in cases:
    gen = torch.Generator().manual_seed(len(shape) * 100 + shape[1])
    batches = [torch.randn(*shape, generator=gen) * 0.5 + 3.0 for _ in range(2)]
    if channels_last:
        batches = [b.contiguous(memory_format=torch.channels_last) for b in batches]
    views = [as_channel_view(b) for b in batches]
    rows = np.concatenate([v.double().permute(0, 2, 1).reshape(-1, v.shape[1]).numpy() for v in views])
    ref = np.cov(rows, rowvar=False, bias=True)
    scale = np.sqrt(np.outer(np.diag(ref), np.diag(ref)))
    for precision in ("double", "mixed"):
        c = views[0].shape[1]
        mean = torch.zeros(c, dtype=torch.float64)
        m2 = torch.zeros(c, c, dtype=torch.float64)
        counts = torch.zeros(2, dtype=torch.float64)
        for v in views:
            ops.cov_update_(mean, m2, counts, v, backend="cpp", precision=precision)
        count = int(counts[0])
        err = float(np.max(np.abs((m2 / count).numpy() - ref) / scale))
        key = precision
        worst[key] = max(worst.get(key, 0.0), err)
print(json.dumps({"isa": _C.build_info()["cpu_kernel_isa"], "worst": worst}))
"""


def _supported_builds() -> list[str]:
    from delve_fast import _C  # noqa: PLC0415

    best = _C.build_info()["cpu_kernel_isa"]
    order = ["generic", "avx2", "avx512"]
    return order[: order.index(best) + 1]


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_each_cpu_build_matches_numpy(compiled, isa):  # noqa: ARG001 (fail if the build is broken)
    if isa not in _supported_builds():
        pytest.skip(f"this CPU cannot run the {isa} build")
    env = dict(os.environ, DELVE_FAST_CPU_ISA=isa)
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["isa"] == isa
    # float64 state: round-off only. Mixed: the documented float32 tile bound (docs/precision.md).
    assert result["worst"]["double"] <= 1e-10
    assert result["worst"]["mixed"] <= 1e-4
