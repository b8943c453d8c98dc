"""Where our log lines go when the application has not configured logging.

Our messages go to the "pytorch_nndct" logger without a prefix of their own. With no logging set up (no
handler on the root logger), Python would print warnings bare through its last-resort handler; this
handler prints them as `pytorch_nndct: message` instead, at the same levels (warnings and above unless
the logger's level is lowered). Once the application configures logging (`logging.basicConfig`, a
framework, pytest), its handlers print our records with its own format, which names the logger, so the
name is never printed twice.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["install"]


class _UnconfiguredHandler(logging.Handler):
    """Prints a record only while the root logger has no handler (the application has not set logging up)."""

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:
            return  # propagation hands the record to the application's handlers
        try:
            sys.stderr.write(f"pytorch_nndct: {self.format(record)}\n")
        except Exception:  # as logging.Handler does: never raise from logging
            self.handleError(record)


def install() -> None:
    logger = logging.getLogger("pytorch_nndct")
    if not any(isinstance(h, _UnconfiguredHandler) for h in logger.handlers):
        logger.addHandler(_UnconfiguredHandler())
