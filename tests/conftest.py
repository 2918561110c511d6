"""Shared test set-up.

Raw-folder audit (guarantee: raw files are never modified, moved or deleted): a PEP 578
audit hook, installed once per pytest process, records every write-like call labpipe makes
on a path under any ``data/raw`` folder, in this process and in every ``python -m labpipe``
subprocess the tests start (through ``tests/rawaudit/sitecustomize.py`` on
``PYTHONPATH``). The session fails if there is any.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

_AUDIT_DIR = Path(__file__).resolve().parent / "rawaudit"
sys.path.insert(0, str(_AUDIT_DIR))

import labpipe_rawaudit  # noqa: E402

#: Violations seen in this process.
RAW_VIOLATIONS: list[dict[str, Any]] = []
#: Violations of subprocesses are appended here (one log per pytest process).
RAW_AUDIT_LOG = os.path.join(
    tempfile.mkdtemp(prefix="labpipe-rawaudit-"), f"violations-{os.getpid()}.jsonl"
)

sys.addaudithook(labpipe_rawaudit.make_hook(RAW_VIOLATIONS.append))
os.environ["LABPIPE_RAW_AUDIT"] = RAW_AUDIT_LOG
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(_AUDIT_DIR), os.environ.get("PYTHONPATH", "")) if p
)


@pytest.fixture(scope="session", autouse=True)
def raw_files_are_never_written() -> Any:
    """Fail the session if labpipe wrote, moved, removed or touched anything in data/raw."""
    yield
    found = RAW_VIOLATIONS + labpipe_rawaudit.read_log(RAW_AUDIT_LOG)
    assert not found, f"labpipe touched raw files: {found[:10]}"
