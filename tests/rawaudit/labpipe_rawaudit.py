"""Audit hook (PEP 578): record every write-like call on a path under a ``data/raw`` folder.

Guarantee: labpipe never opens a raw file for writing, never renames, removes, truncates or
touches one, and never creates anything inside ``data/raw``. The hook sees every such call
made by Python code in the process, whatever library makes it (``open``, ``os.open``,
pandas, pyarrow's Python layer, ``os.utime`` ...).

A call counts as labpipe's when the innermost frame of the ``labpipe`` package on the stack
is not ``labpipe/demo.py`` (the demo generator writes raw files into a fresh lab folder on
purpose). Calls with no labpipe frame are test set-up (a test writing its raw files).

Used in two places:

* ``tests/conftest.py`` installs it in each pytest process (once: hooks cannot be removed);
* ``sitecustomize.py`` beside this file installs it in every ``python -m labpipe``
  subprocess whose environment has ``LABPIPE_RAW_AUDIT=<log file>`` (conftest puts this
  folder on ``PYTHONPATH``); each violation is appended to the log as one JSON line at once,
  so a run killed with SIGKILL keeps what it recorded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Callable
from typing import Any

_RAW = f"{os.sep}data{os.sep}raw{os.sep}"
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

#: event -> indexes of the path arguments to check
_PATH_ARGS: dict[str, tuple[int, ...]] = {
    "os.rename": (0, 1),  # also os.replace
    "os.remove": (0,),  # also os.unlink
    "os.rmdir": (0,),
    "os.mkdir": (0,),
    "os.utime": (0,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.chflags": (0,),
    "os.lchflags": (0,),
    "os.truncate": (0,),
    "os.link": (0, 1),
    "os.symlink": (1,),
    "os.setxattr": (0,),
    "os.removexattr": (0,),
    "os.mkfifo": (0,),
    "os.mknod": (0,),
    "shutil.rmtree": (0,),
    "shutil.copyfile": (1,),
    "shutil.copymode": (1,),
    "shutil.copystat": (1,),
    "shutil.copytree": (1,),
    "shutil.move": (0, 1),
}


def _package_dir() -> str | None:
    try:
        spec = importlib.util.find_spec("labpipe")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    return os.path.dirname(os.path.abspath(spec.origin)) + os.sep


def _under_raw(path: Any) -> str | None:
    if isinstance(path, int) or path is None:
        return None
    try:
        text = os.fsdecode(path)
    except TypeError:
        return None
    full = os.path.abspath(text)
    return full if _RAW in full + os.sep else None


def _is_write_open(mode: Any, flags: Any) -> bool:
    if isinstance(mode, str) and any(c in mode for c in "wax+"):
        return True
    return isinstance(flags, int) and bool(flags & _WRITE_FLAGS)


def make_hook(record: Callable[[dict[str, Any]], None]) -> Callable[[str, tuple[Any, ...]], None]:
    """Return an audit hook calling ``record`` with each violation."""
    package = _package_dir()
    demo = (package or "") + "demo.py"
    busy = [False]

    def owner() -> str | None:
        """The innermost labpipe frame, as 'file:line' (None: not labpipe's call)."""
        if package is None:
            return None
        frame = sys._getframe(2)
        while frame is not None:
            name = frame.f_code.co_filename
            if name.startswith(package):
                return None if name == demo else f"{name}:{frame.f_lineno}"
            frame = frame.f_back
        return None

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if busy[0]:
            return
        if event == "open":
            paths = [args[0]] if len(args) >= 3 and _is_write_open(args[1], args[2]) else []
        elif event in _PATH_ARGS:
            paths = [args[i] for i in _PATH_ARGS[event] if i < len(args)]
        else:
            return
        hits = [p for p in (_under_raw(p) for p in paths) if p is not None]
        if event == "os.mkdir":  # making data/raw itself (labpipe init) changes no raw file
            hits = [p for p in hits if not p.rstrip(os.sep).endswith(_RAW.rstrip(os.sep))]
        if not hits:
            return
        busy[0] = True
        try:
            where = owner()
            if where is not None:
                record({"event": event, "paths": hits, "where": where, "pid": os.getpid()})
        finally:
            busy[0] = False

    return hook


def install_to_file(log_path: str) -> None:
    """Install the hook appending violations to ``log_path`` as JSON lines."""

    def record(item: dict[str, Any]) -> None:
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(item) + "\n").encode())
        finally:
            os.close(fd)

    sys.addaudithook(make_hook(record))


def read_log(log_path: str) -> list[dict[str, Any]]:
    """Return the violations recorded in a log written by :func:`install_to_file`."""
    try:
        with open(log_path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except FileNotFoundError:
        return []
