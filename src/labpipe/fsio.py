"""Durable, atomic file writes that keep the lab's permissions.

Every file labpipe writes outside SQLite goes through :func:`atomic_write` or
:func:`publish`: the bytes go to a dot-prefixed temporary file in the destination folder
(dot-prefixed so pandas, pyarrow and Dask skip it), are flushed and fsynced, then
``os.replace`` swaps them in and the folder is fsynced so the rename survives a power loss.

Temporary files are created with ``open(..., "xb")``, which honours the umask (0644 under
022). ``tempfile.mkstemp`` would create 0600 files that the rest of the lab cannot read.

``OSError`` from the disk (full, read-only, permission denied) becomes
:class:`labpipe.errors.EnvironmentFailure` naming the path and the free space.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from labpipe.errors import EnvironmentFailure

_ENV_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EIO,
    errno.EFBIG,
}


#: Test hooks, read once per process: ``LABPIPE_CRASH_AT=step:n`` kills the process with
#: SIGKILL the n-th time it reaches ``step`` (crash tests, like SQLite's crash VFS);
#: ``LABPIPE_FAIL_WRITE_AT=n`` makes the n-th atomic write fail with ENOSPC (disk-full
#: tests). Both are inert unless set.
_CRASH_AT = os.environ.get("LABPIPE_CRASH_AT", "")
_FAIL_WRITE_AT = int(os.environ.get("LABPIPE_FAIL_WRITE_AT", "0") or 0)
_hits: dict[str, int] = {}


def crash_point(step: str) -> None:
    """Die here with SIGKILL when ``LABPIPE_CRASH_AT`` names this step and call count."""
    if not _CRASH_AT:
        return
    _hits[step] = _hits.get(step, 0) + 1
    name, _, nth = _CRASH_AT.partition(":")
    if name == step and _hits[step] == int(nth or 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _maybe_fail_write(dest: Path) -> None:
    if not _FAIL_WRITE_AT:
        return
    _hits["write"] = _hits.get("write", 0) + 1
    if _hits["write"] == _FAIL_WRITE_AT:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dest))


def free_bytes(path: Path) -> int | None:
    """Return the free space of the filesystem holding ``path`` (None when unknown)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def environment_failure(exc: OSError, path: Path) -> EnvironmentFailure:
    """Turn an ``OSError`` of the machine into an :class:`EnvironmentFailure` for ``path``.

    Parameters
    ----------
    exc
        The error the operating system raised.
    path
        The file or folder labpipe was writing.

    Returns
    -------
    EnvironmentFailure
        With a message naming the path, the error and, for a full disk, the free space.
    """
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        free = free_bytes(path)
        free_txt = f"{free / 1e6:.1f} MB free" if free is not None else "free space unknown"
        return EnvironmentFailure(
            f"The disk holding {path} is full ({free_txt}); nothing already ingested was lost.",
            path=str(path),
            hint="Free some space and run the command again.",
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return EnvironmentFailure(
            f"labpipe may not write {path} ({os.strerror(exc.errno)}).",
            path=str(path),
            hint="Check the folder's owner and permissions, then run the command again.",
        )
    return EnvironmentFailure(
        f"Writing {path} failed: {exc.strerror or exc}.",
        path=str(path),
        hint="Check the disk, then run the command again.",
    )


def is_environment_error(exc: BaseException) -> bool:
    """Return whether ``exc`` is a failure of the machine rather than of labpipe."""
    return isinstance(exc, OSError) and exc.errno in _ENV_ERRNOS


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in folder ``path`` durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; renames there are journaled by NTFS
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(dest: Path) -> Path:
    """Return a fresh dot-prefixed temporary path beside ``dest``."""
    return dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")


@contextlib.contextmanager
def atomic_write(dest: Path) -> Iterator[BinaryIO]:
    """Write ``dest`` atomically: readers see the old file or the whole new one.

    Parameters
    ----------
    dest
        The final path. Its folder is created when missing.

    Yields
    ------
    BinaryIO
        A binary file object to write the new content to.

    Raises
    ------
    EnvironmentFailure
        When the disk refuses the write (full, read-only, permission denied).
    """
    tmp = temp_name(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "xb") as fh:
            yield fh
            _maybe_fail_write(dest)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except OSError as exc:
        _discard(tmp)
        if is_environment_error(exc):
            raise environment_failure(exc, dest) from exc
        raise
    except BaseException:
        _discard(tmp)
        raise


def write_bytes(dest: Path, data: bytes) -> None:
    """Atomically replace ``dest`` with ``data`` (see :func:`atomic_write`)."""
    with atomic_write(dest) as fh:
        fh.write(data)


def write_text(dest: Path, text: str) -> None:
    """Atomically replace ``dest`` with UTF-8 ``text``."""
    write_bytes(dest, text.encode("utf-8"))


def publish(src: Path, dest: Path) -> None:
    """Move a staged, fsynced file into place with ``os.replace`` and fsync the folder.

    Parameters
    ----------
    src
        The staged file; must be on the same filesystem as ``dest``.
    dest
        The final path.
    """
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)
        fsync_dir(dest.parent)
    except OSError as exc:
        if is_environment_error(exc):
            raise environment_failure(exc, dest) from exc
        raise


def _discard(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def read_unchanged(path: str, size: int, mtime_ns: int) -> bytes | None:
    """Read a whole file that was seen with ``size`` and ``mtime_ns``, read-only.

    Returns None when the file changed since it was seen (a chamber still writing it):
    its bytes, size or mtime differ after the read. One ``open``, ``read``, ``fstat`` and
    ``close`` for a small file. ``open(...).read(n)`` costs three times as many system
    calls, and with a large ``n`` it maps and unmaps an ``n``-byte buffer for every file,
    which a run over 10⁵ files pays 10⁵ times.

    Parameters
    ----------
    path
        The file.
    size, mtime_ns
        What the folder scan saw.

    Returns
    -------
    bytes or None
        The file's bytes, or None when it changed.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        parts = [os.read(fd, size + 1)]
        got = len(parts[0])
        # A regular file returns what was asked up to its end; a network file system may
        # return less (POSIX allows it), so read on until the end or past the size seen.
        while got < size and parts[-1]:
            parts.append(os.read(fd, size + 1 - got))
            got += len(parts[-1])
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if got != size or after.st_size != size or after.st_mtime_ns != mtime_ns:
        return None
    return parts[0] if len(parts) == 1 else b"".join(parts)
