"""delve's ``delve.logger``: the package logger and a handler that writes through tqdm.

delve_fast logs to the ``delve_fast`` logger and, unlike delve, attaches no
handler on import (a library should leave that to the application). To get
delve's output, which does not break tqdm progress bars::

    from delve_fast.logger import TqdmLoggingHandler, log
    log.addHandler(TqdmLoggingHandler())
"""

from __future__ import annotations

import logging
import sys

__all__ = ["TqdmLoggingHandler", "log"]

#: The logger every delve_fast module writes to.
log = logging.getLogger("delve_fast")


class TqdmLoggingHandler(logging.Handler):
    """Write log records with ``tqdm.write``, so they do not break progress bars.

    Records are formatted as delve formats them (``LEVEL:delve:message``).
    Without tqdm installed, records go to standard error.

    Parameters
    ----------
    level : int, default logging.NOTSET
    """

    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.setFormatter(logging.Formatter("%(levelname)s:delve:%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        """Format ``record`` and write it above any tqdm bar."""
        try:
            msg = self.format(record)
            try:
                import tqdm  # imported here: tqdm is optional and `import delve_fast` stays light
            except ImportError:
                sys.stderr.write(msg + "\n")
            else:
                tqdm.tqdm.write(msg)
            self.flush()
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)
