"""Crash-safe file output: write beside the target, then move it into place.

Every file a writer produces goes through :func:`atomic_write`. The bytes
are written to ``<dir>/.<name>.<12 hex>.tmp`` in the target's own folder
(``os.replace`` is atomic only within one file system), flushed and
``fsync``-ed, and then renamed over the target. A reader, or the next run
after a ``SIGKILL``, therefore sees either the previous complete file or the
new complete file, never a truncated one. A kill between the write and the
rename leaves a temporary file behind; :func:`remove_leftovers` deletes such
files when a writer starts.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Callable, Iterator
from typing import IO

__all__ = ["atomic_write", "atomic_path", "remove_leftovers", "is_temporary", "TEMP_SUFFIX"]

TEMP_SUFFIX = ".tmp"
#: ``.<target name>.<12 lowercase hex digits>.tmp``: what :func:`atomic_path` creates.
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[0-9a-f]{12}\.tmp$")
#: Temporary CSVs of delve_fast <= 0.1 (``<name>.csv.tmp-<pid>``), removed as well.
_OLD_CSV_TEMP = re.compile(r"^(?P<target>.+\.csv)\.tmp-\d+$")


def is_temporary(filename: str) -> bool:
    """Whether ``filename`` (a base name) is a temporary file of :func:`atomic_path`."""
    return bool(_TEMP_NAME.match(filename) or _OLD_CSV_TEMP.match(filename))


def _fsync_dir(folder: str) -> None:
    # The rename is durable only once the directory entry is on disk (POSIX);
    # Windows cannot open a directory, and there the rename is durable already.
    if os.name != "posix":
        return
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str, fsync: bool = True) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success move it onto ``path``.

    The caller writes the complete file to the yielded path (for libraries
    that insist on opening the file themselves, such as ``savefig``). If the
    block raises, the temporary file is removed and ``path`` is untouched.

    Parameters
    ----------
    path : str
        Final location. Its folder must exist.
    fsync : bool, default True
        Force the file, and then the folder's entry, to disk. Without it the
        result still survives a killed process (the kernel holds the data),
        but not necessarily a power cut or an operating system crash.
    """
    folder, name = os.path.split(os.fspath(path))
    tmp = os.path.join(folder, f".{name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as fh:  # the library closed it: reopen only to fsync
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    if fsync:
        _fsync_dir(folder)


def atomic_write(path: str, write: Callable[[IO[bytes]], object], fsync: bool = True) -> None:
    """Write a file crash-safely: ``write(fh)`` fills a binary temporary file, which then replaces ``path``.

    Parameters
    ----------
    path : str
        Final location. Its folder must exist.
    write : callable
        Receives the open binary file handle and writes the whole content.
    fsync : bool, default True
        As for :func:`atomic_path`.

    Examples
    --------
    >>> atomic_write("counter.json", lambda fh: fh.write(b"{}"))  # doctest: +SKIP
    """
    with atomic_path(path, fsync=False) as tmp:
        with open(tmp, "xb") as fh:
            write(fh)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
    if fsync:
        _fsync_dir(os.path.dirname(os.fspath(path)))


def remove_leftovers(folder: str, target: Callable[[str], bool] | None = None, recursive: bool = False) -> list[str]:
    """Delete the temporary files that an interrupted :func:`atomic_path` left in ``folder``.

    Parameters
    ----------
    folder : str
        Folder to clean; a missing folder is fine.
    target : callable, optional
        Receives the final file name a temporary file was meant for and says
        whether this writer owns it (writers sharing a folder clean only their
        own files). Default: every temporary file.
    recursive : bool, default False
        Also clean the sub-folders.

    Returns
    -------
    list of str
        The paths removed.
    """
    removed: list[str] = []
    if not os.path.isdir(folder):
        return removed
    walk = os.walk(folder) if recursive else [(folder, [], os.listdir(folder))]
    for root, _dirs, files in walk:
        for filename in files:
            match = _TEMP_NAME.match(filename) or _OLD_CSV_TEMP.match(filename)
            if match is None or (target is not None and not target(match.group("target"))):
                continue
            path = os.path.join(root, filename)
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
                removed.append(path)
    return removed
