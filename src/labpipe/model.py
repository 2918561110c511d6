"""Small frozen types shared by every layer of labpipe.

Nothing here knows about files, configs or tables; these are the nouns the layers pass
to each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

#: One MED-PC variable: a scalar, or an array holding every slot as written (trailing
#: zero padding kept; the raw layer never guesses which zeros are padding).
Value = float | np.ndarray

#: Header fields of a MED-PC session block, in the order MED-PC writes them.
HEADER_FIELDS: tuple[str, ...] = (
    "Start Date",
    "End Date",
    "Subject",
    "Experiment",
    "Group",
    "Box",
    "Start Time",
    "End Time",
    "MSN",
)


class Reason(StrEnum):
    """Why a raw file, or one session of it, was set aside (or not ingested yet).

    The code is what tests and monitors match on; the message that goes with it is what
    a lab tech reads.
    """

    EMPTY_FILE = "EMPTY_FILE"
    NOT_MEDPC = "NOT_MEDPC"
    UNREADABLE_ENCODING = "UNREADABLE_ENCODING"
    TOO_LARGE = "TOO_LARGE"
    TRUNCATED_BLOCK = "TRUNCATED_BLOCK"
    BAD_HEADER = "BAD_HEADER"
    BAD_DATE = "BAD_DATE"
    BAD_VALUE = "BAD_VALUE"
    UNKNOWN_SUBJECT = "UNKNOWN_SUBJECT"
    UNKNOWN_PHASE = "UNKNOWN_PHASE"
    MISSING_VARIABLE = "MISSING_VARIABLE"
    BAD_EVENT_CODE = "BAD_EVENT_CODE"
    DUPLICATE_FILE = "DUPLICATE_FILE"
    DUPLICATE_SESSION = "DUPLICATE_SESSION"
    CONFLICT = "CONFLICT"
    RELABEL = "RELABEL"
    BOX_CLASH = "BOX_CLASH"
    PENDING = "PENDING"


class Phase(StrEnum):
    """The phases of the self-administration -> extinction -> reinstatement paradigm."""

    ACQUISITION = "acquisition"
    EXTINCTION = "extinction"
    REINSTATEMENT = "reinstatement"


@dataclass(frozen=True, slots=True)
class RawSession:
    """One session block of a MED-PC data file, exactly as written.

    Attributes
    ----------
    header
        Header fields in file order, keyed by the name before the colon (``"Start Date"``,
        ``"Subject"``, ``"MSN"``, ...) with the value stripped of surrounding blanks.
        The file-level ``"File"`` line, when present, is repeated in every session.
    variables
        Letter -> value, in file order. A scalar is a ``float``; an array is a 1-D
        ``float64`` numpy array of every slot, zero padding included; an empty array
        (a letter line with no rows) is an array of length 0.
    block
        0-based position of this session in its file.
    line
        1-based line number of the block's first header line.
    comments
        Comment lines (those starting with a backslash) of the block, backslash removed.
    """

    header: Mapping[str, str]
    variables: Mapping[str, Value]
    block: int = 0
    line: int = 1
    comments: tuple[str, ...] = ()

    @property
    def subject(self) -> str:
        """The ``Subject:`` field as typed (empty when absent)."""
        return self.header.get("Subject", "")

    @property
    def msn(self) -> str:
        """The ``MSN:`` program name (empty when absent)."""
        return self.header.get("MSN", "")


@dataclass(frozen=True, slots=True)
class BlockProblem:
    """A session block that could not be read, while the rest of its file could.

    Attributes
    ----------
    block
        0-based position of the block in its file.
    line
        1-based line number where the problem was found.
    reason
        The reason code.
    message
        Plain words naming the block (box, subject) and what is wrong with it.
    header
        Whatever header fields of the block could be read.
    """

    block: int
    line: int
    reason: Reason
    message: str
    header: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ParsedFile:
    """Everything read from one MED-PC data file.

    Attributes
    ----------
    sessions
        The complete session blocks, in file order.
    problems
        Blocks that could not be read (e.g. a last block cut off by a power loss).
    encoding
        The codec that decoded the bytes (``"utf-8"``, ``"cp1252"`` or ``"latin-1"``).
    newline
        ``"CRLF"``, ``"LF"``, ``"CR"`` or ``"mixed"``.
    """

    sessions: tuple[RawSession, ...]
    problems: tuple[BlockProblem, ...] = ()
    encoding: str = "utf-8"
    newline: str = "CRLF"
