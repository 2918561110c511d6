"""The one exception hierarchy of labpipe.

Every error a user can cause or meet derives from :class:`LabpipeError`. The command line
(`labpipe.cli`) is the only place that turns them into messages and exit codes:

=================  =========  ==========================================================
class              exit code  meaning
=================  =========  ==========================================================
ConfigError        2          the config, roster or a command-line value is wrong
LockedError        3          another labpipe run holds the lab folder's run lock
EnvironmentFailure 4          the machine failed us (disk full, permission denied, I/O)
(anything else)    5          a bug in labpipe; the traceback goes to the log
=================  =========  ==========================================================

A raw file that cannot be read is not an exception of the run: the parser raises
:class:`MedPCFormatError`, ingest catches it, sets the file aside with the error's
``reason_code`` and message, and goes on with the other files (exit code 1 at the end).

This module imports nothing from labpipe.
"""

from __future__ import annotations


class LabpipeError(Exception):
    """Base of every error labpipe raises on purpose.

    Parameters
    ----------
    message
        One or two plain sentences: what is wrong, naming the file, line or key.
    hint
        Optional: what to do about it.
    """

    exit_code: int = 5

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} {self.hint}"
        return self.message


class ConfigError(LabpipeError):
    """The experiment config, the roster, corrections or a command option is invalid.

    Parameters
    ----------
    message
        The problems, one per line, each naming the file and the key path.
    path
        The file at fault, when there is one.
    """

    exit_code = 2

    def __init__(self, message: str, *, path: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.path = path


class LockedError(LabpipeError):
    """Another labpipe run holds the run lock of this lab folder."""

    exit_code = 3


class EnvironmentFailure(LabpipeError):
    """The machine failed us: disk full, permission denied, an I/O error.

    Parameters
    ----------
    message
        What failed, naming the path.
    path
        The path that could not be written or read.
    """

    exit_code = 4

    def __init__(self, message: str, *, path: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.path = path


class MedPCFormatError(LabpipeError):
    """A raw file (or one session block in it) is not a readable MED-PC data file.

    Parameters
    ----------
    message
        Plain words a lab tech can act on.
    reason_code
        A stable code (``EMPTY_FILE``, ``NOT_MEDPC``, ``TRUNCATED_BLOCK``, ...), see
        :class:`labpipe.model.Reason`.
    path
        The raw file.
    line
        1-based line number where the problem was found, when known.
    """

    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        reason_code: str,
        path: str | None = None,
        line: int | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.reason_code = reason_code
        self.path = path
        self.line = line


class DataError(LabpipeError):
    """Stored data are missing or damaged (e.g. the report asked for before any ingest)."""

    exit_code = 2


class InternalError(LabpipeError):
    """An invariant of labpipe itself was broken (a bug)."""

    exit_code = 5


class SessionError(LabpipeError):
    """One session cannot be mapped onto the experiment (unknown subject, unknown MSN, ...).

    Ingest sets the session aside with ``reason_code`` and the message, and goes on.

    Parameters
    ----------
    message
        Plain words naming the session (subject, box, start) and the fix.
    reason_code
        A stable code from :class:`labpipe.model.Reason`.
    """

    exit_code = 1

    def __init__(self, message: str, *, reason_code: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason_code = reason_code
