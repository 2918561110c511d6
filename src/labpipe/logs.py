"""Logging set-up for the command line: JSON lines to a rotating file, warnings to stderr.

The library only calls ``logging.getLogger(__name__)``; this module, called by the CLI,
decides where records go. Every record carries the run id.
"""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

from pythonjsonlogger.json import JsonFormatter

LOG_NAME = "labpipe.log"


class _Brief(logging.Formatter):
    """One line per record on stderr: tracebacks go to the log file only."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text
        record.exc_info, record.exc_text = None, None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text = saved


def _for_stderr(record: logging.LogRecord) -> bool:
    # Records the command line has already told the user about in its own words.
    return getattr(record, "stderr", True)


class _RunId(logging.Filter):
    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = self.run_id
        return True


def configure(log_dir: Path | None, *, run_id: str, verbose: bool = False) -> Path | None:
    """Send labpipe's log records to ``log_dir/labpipe.log`` as JSON lines.

    Parameters
    ----------
    log_dir
        Folder for the log (``data/processed/logs``); None logs to stderr only.
    run_id
        Added to every record.
    verbose
        Also show info records on stderr.

    Returns
    -------
    Path or None
        The log file, when there is one.
    """
    root = logging.getLogger("labpipe")
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.DEBUG)
    root.propagate = False
    stderr = logging.StreamHandler()
    stderr.setLevel(logging.INFO if verbose else logging.WARNING)
    stderr.setFormatter(_Brief("%(levelname)s: %(message)s"))
    stderr.addFilter(_for_stderr)
    root.addHandler(stderr)
    if log_dir is None:
        return None
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / LOG_NAME
        # Keep a year of nightly logs in 10 MB files; rotation keeps the log bounded.
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=10_000_000, backupCount=30, encoding="utf-8"
        )
    except OSError:
        return None
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(run_id)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    )
    handler.addFilter(_RunId(run_id))
    stderr.addFilter(_RunId(run_id))
    root.addHandler(handler)
    return path
