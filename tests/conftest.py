"""Shared fixtures of the delve_fast test-suite; the helpers live in :mod:`delve_fast.testing`."""

from __future__ import annotations

import os

import pytest
import torch

from delve_fast import _loader


def pytest_collection_modifyitems(config, items):
    """Give the ``slow`` marker its documented meaning: skipped unless selected with ``-m slow``."""
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow test: run with -m slow")
    for item in items:
        if item.get_closest_marker("slow"):
            item.add_marker(skip)


@pytest.fixture
def compiled():
    """``torch.ops.delve_fast``; fails (not skips) when the extension did not load.

    A broken build must not turn into a silently green suite. The only
    exception is a run that hides the extension on purpose.
    """
    if _loader.extension() is None:
        if os.environ.get("DELVE_FAST_HIDE_EXTENSION"):
            pytest.skip("compiled extension hidden by DELVE_FAST_HIDE_EXTENSION")
        pytest.fail(f"compiled extension failed to load: {_loader.load_error()}")
    return torch.ops.delve_fast
