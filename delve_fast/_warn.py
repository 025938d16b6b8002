"""Warnings that point at the user's line, however deep inside delve_fast they are raised."""

from __future__ import annotations

import os
import sys
import warnings

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_stacklevel() -> int:
    """The ``stacklevel`` of the first caller outside the delve_fast package (for :func:`warnings.warn`)."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level


def warn_user(message: str, category: type[Warning] = RuntimeWarning) -> None:
    """Issue ``message`` attributed to the user's code that called into delve_fast.

    The call chain from a public method to the place that warns differs by
    path (one process or distributed, safe wrapper or not), so a fixed
    ``stacklevel`` would point into the library on some of them.
    """
    # user_stacklevel counts from this function's caller; warn's level 1 is this function.
    warnings.warn(message, category, stacklevel=user_stacklevel())
