r"""Read and write MED-PC IV/V data files (raw bytes <-> :class:`labpipe.model.RawSession`).

This is labpipe's raw layer: it turns the bytes of one MED-PC data file into sessions
holding every header field and every variable exactly as written, and nothing more (dates,
subjects and event codes are interpreted by later layers).

The format
----------
A literal excerpt (``3c-lab/operant-data-pipeline``, ``Examples/SF1_MedPC_example_txt``;
line ends shown as ``\r\n`` etc., and most rows shortened)::

    File: D:\computer_E\MTF134EC21HSOXYLGA04\r\n
    \n
    \r\r\n
    Start Date: 11/02/23\r\n
    End Date: 11/03/23\r\n
    Subject: M2169\r\n
    Experiment: 0\r\n
    Group: 0\r\n
    Box: 1\r\n
    Start Time: 15:28:23\r\n
    End Time: 03:38:59\r\n
    MSN: OXYGWAS 12h\r\n
    A:       0.000\r\n
    B:      44.000\r\n
    ...
    H:\r\n
         0:    43035.000        0.000    43035.000        0.000\r\n
    L:\r\n
         0:        0.000        0.000        0.000        0.000        0.000\r\n
         5:        0.000        0.000        0.000        0.000        0.000\r\n
    ...
      2000:        0.000\r\n
    \n
    \r\r\n
    Start Date: 11/02/23\r\n          <- the next box's session block
    ...

* An optional ``File:`` line names the file MED-PC wrote; it applies to every block after
  it and is put into each session's header as ``"File"`` (first in the header).
* One file holds one or more session **blocks**; each starts at a ``Start Date:`` line
  and runs to the next ``Start Date:`` (or ``File:``) line or the end of the file.
* Header lines are ``Name: value``: ``Start Date``, ``End Date``, ``Subject``,
  ``Experiment``, ``Group``, ``Box``, ``Start Time``, ``End Time``, ``MSN`` in that order
  (other multi-letter names are kept as well). Values are kept as text, stripped:
  ``Start Time:  9:29:07`` (hour padded with a blank) gives ``"9:29:07"``,
  ``Subject:M1`` (no blank) gives ``"M1"``, ``Subject: OO M1`` gives ``"OO M1"``,
  ``Group: `` gives ``""``; 2- and 4-digit years are left to the date layer. A missing
  field is absent from the dict.
* Variables are single capital letters. A **scalar** is ``B:    1513.000`` on one line. An
  **array** is a letter line ``C:`` followed by rows ``     0:      153.000 ...``: a
  right-aligned row label (the index of the row's first value; wider than 6 when needed,
  ``100000:``) and 1 to 8 values (MED-PC's ``DISKCOLUMNS``; 1, 5, 6 and 8 are seen).
  An array with no rows (``L:`` followed by the next letter) is an array of length 0.
  Every slot is kept, trailing zero padding included: the raw layer does not guess.
* Values are ``%.3f`` (``DISKFORMAT``), ``%.5f``, or integers without a decimal point
  (``     0:   11    2    0``), some written in exponent form (``1.5E2``); negative
  values occur. Blanks and tabs after the last value of a row are ignored.
* Comment lines start with a backslash (``\9/17 20% sucrose``) and follow the variables;
  they are kept, backslash removed, in :attr:`RawSession.comments`.
* Line ends: CRLF (MED-PC on Windows), LF (a file normalised by git), CR, and the
  framing MED-PC writes before each block, a bare LF line then a CR CR LF line. ``\r\n``
  counts as one line end and a lone ``\r`` or ``\n`` as one each, so ``\r\r\n`` is two
  (line numbers in messages are those of an editor that shows CR as a line break). The
  text is split on ``\n`` only after normalising: never with ``str.splitlines()``, which
  also splits on ``\x1c``-``\x1e``, ``\x85`` and ``\u2028``.
* Bytes are decoded as UTF-8 (a byte-order mark is dropped; it must not hide the first
  ``Start Date:``), else cp1252 (MED-PC writes the Windows ANSI code page), else latin-1.
  UTF-16 text ("Unicode" in Notepad: a UTF-16 BOM, or many NUL bytes) is refused.

Rules of the reader
-------------------
* Row labels must be contiguous: each row's label equals the number of values read
  before it in that array. A jump, a row without values, a value that is not a number or
  a line that belongs nowhere makes that block a :class:`~labpipe.model.BlockProblem`
  (``BAD_VALUE``; ``BAD_HEADER`` for the header), and the other blocks are still read.
* A block must name ``Start Date``, ``Start Time``, ``Subject`` and ``Box`` to be
  identifiable; otherwise it is ``BAD_HEADER``.
* **Truncation.** MED-PC writes blocks one after another, so only the *last* block of a
  file can be cut off (power loss, a copy interrupted, a file still being written). The
  last block is ``TRUNCATED_BLOCK`` when

  1. the file does not end with a line end (every complete MED-PC file does): the last
     line, be it a header, a scalar or an array row, may be cut in the middle of a value
     (``1339.020`` cannot be told from a complete number). Only a trailing comment line
     (``\...``) is exempt; a CRLF file ending in a lone CR counts as cut too. A last line
     that is the start of ``Start Date:`` after a blank line is a new block cut in its
     first line: the block before it is whole, and the lost one is reported as a
     ``TRUNCATED_BLOCK`` problem of its own; or
  2. the file ends in NUL bytes (what NTFS leaves after a power loss): the NULs stand where
     data should be; or
  3. the block has a header but no variable (the cut came during or right after the
     header); or
  4. an earlier block of the file ran the same MSN, and this block stops short of it: its
     letters are a strict prefix of the earlier block's, or its last variable is an array
     shorter than the earlier block's (the cut fell exactly on a line end).

  A single-block file cut exactly at a line end after a complete row or scalar cannot be
  told from a complete one; ingest's settle window (the file must not change for a while)
  covers the file-still-being-written case.
* Whole-file failures raise :class:`~labpipe.errors.MedPCFormatError`: ``EMPTY_FILE``,
  ``NOT_MEDPC`` (neither a ``Start Date:`` block nor a variable), ``BAD_HEADER`` (variables
  but no header: a "stripped" file; or a single block that cannot be identified; a file
  whose only block fails raises that block's reason), ``UNREADABLE_ENCODING`` and
  ``TOO_LARGE`` (see :class:`Limits`). Nothing else escapes: no ``ValueError``,
  ``UnicodeDecodeError``, ``IndexError`` or ``MemoryError``; memory and time are bounded by
  the caps whatever the bytes.
* Speed: a small file laid out exactly as MED-PC writes it (no comment, no blank line
  inside a block, rows of one width labelled as MED-PC labels them, nothing cut off...)
  is read first by a lean reader on its bytes (:func:`_parse_standard`: a few splits,
  one ``float`` map); anything it does not take goes to the general reader below. Each
  line is read once. The arrays of a file are read together by numpy alone
  (:func:`_vector_rows`: token bounds, labels, dots, signs and exponents found with
  whole-array operations, each value computed as an exact integer times or over a power
  of ten, which gives exactly ``float(text)``). Whatever that reader doubts (a bad row,
  an unusual number) is read again array by array: rows checked in bulk and converted
  with ``np.fromiter(map(float, tokens))``, or row by row for short arrays, and a bad
  line found and named by :func:`_diagnose_rows`. All paths give the same sessions, bit
  for bit (``tests/test_medpc_speed_invariants.py``).
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from labpipe.errors import MedPCFormatError
from labpipe.model import HEADER_FIELDS, BlockProblem, ParsedFile, RawSession, Reason, Value

__all__ = [
    "DEFAULT_LIMITS",
    "PARSER_VERSION",
    "Limits",
    "describe",
    "format_medpc",
    "inspect_problems",
    "inspect_records",
    "parse_medpc",
    "read_medpc",
]

#: Bumped whenever the reader's output for some input changes.
PARSER_VERSION = "1"


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps that bound the reader's memory and time, set well above real files.

    Attributes
    ----------
    max_file_bytes
        Largest file read (the biggest real file seen is under 1 MB).
    max_line_chars
        Longest line, in bytes.
    max_array_values
        Most values in one array (real arrays reach 100 001 slots).
    max_blocks
        Most session blocks in one file.
    """

    max_file_bytes: int = 64 * 2**20
    max_line_chars: int = 64 * 2**10
    max_array_values: int = 2_000_000
    max_blocks: int = 4096


DEFAULT_LIMITS = Limits()

#: Fields a block needs to be told apart from every other session.
_IDENTITY = ("Start Date", "Start Time", "Subject", "Box")
_SAVE_AS = "Open it in Notepad and save it again with Encoding 'ANSI' or 'UTF-8'."

# The text searched always starts with "\n", so that every line start follows a "\n": a
# pattern opening with a literal "\n" is searched far faster than one opening with "^".
_BLOCK_RE = re.compile(r"\n(Start Date|File)[ \t]*:([^\n]*)")
_VAR_RE = re.compile(r"\n([A-Z]):([^\n]*)")
_HEADER_RE = re.compile(r"([A-Za-z][A-Za-z ]*[A-Za-z])[ \t]*:(.*)")
_HEADER_LINE_RE = re.compile(r"\n([A-Za-z][A-Za-z ]*[A-Za-z])[ \t]*:([^\n]*)")
#: Read plain headers with one regex pass (tests switch it off to compare paths).
_QUICK_HEADER = True
_ROW_START_RE = re.compile(r"[ \t]*\d+:")
_LABEL_RE = re.compile(r"\n[ \t]*\d+:")
_COMMENT_RE = re.compile(r"^\\([^\n]*)$", re.M)
_NUMBER_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
#: Files shorter than this have their line ends classified with a regex, not numpy.
_SMALL_NEWLINE_BYTES = 1 << 16
#: Array rows are converted this many characters at a time, to bound memory.
_CHUNK_CHARS = 1 << 20


class _BlockError(Exception):
    """A block cannot be read (internal; becomes a BlockProblem)."""

    def __init__(self, reason: Reason, pos: int, message: str, *, incomplete: bool = False):
        super().__init__(message)
        self.reason = reason
        self.pos = pos
        self.message = message
        self.incomplete = incomplete
        self.header: dict[str, str] = {}


# ---------------------------------------------------------------------------------------
# Bytes -> text
# ---------------------------------------------------------------------------------------


def _fail(reason: Reason, message: str, source: str, line: int | None = None) -> MedPCFormatError:
    return MedPCFormatError(
        f"{source}: {message}", reason_code=reason.value, path=source, line=line
    )


def _byte_line(data: bytes, pos: int) -> int:
    """Return the 1-based line number of byte ``pos`` (CRLF, CR and LF each end a line)."""
    head = data[:pos]
    return head.count(b"\n") + head.count(b"\r") - head.count(b"\r\n") + 1


def _check_bytes(data: bytes, source: str, limits: Limits) -> tuple[bytes, bool]:
    """Refuse what cannot be a MED-PC file; return the bytes without NUL padding.

    Returns the content and whether NUL padding was cut off its end.
    """
    if len(data) > limits.max_file_bytes:
        raise _fail(
            Reason.TOO_LARGE,
            f"the file is {len(data):,} bytes; no MED-PC data file is larger than "
            f"{limits.max_file_bytes:,} bytes, so it is not read.",
            source,
        )
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise MedPCFormatError(
            f"{source}: the file was saved as 'Unicode' (UTF-16) text, which MED-PC never writes.",
            reason_code=Reason.UNREADABLE_ENCODING.value,
            path=source,
            hint=_SAVE_AS,
        )
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    content = data.rstrip(b"\x00")
    padded = len(content) < len(data)
    if not content.strip(b" \t\r\n\x0b\x0c\x00"):
        if not data:
            what = "is empty (0 bytes)"
        elif padded:
            what = "holds only NUL bytes and blanks (what a power loss leaves behind)"
        else:
            what = "holds only blanks and line ends"
        raise _fail(Reason.EMPTY_FILE, f"the file {what}; it holds no session.", source)
    nuls = content.count(b"\x00")
    if nuls and (nuls * 8 >= len(content) or content[1:200:2].count(0) > 40):
        raise MedPCFormatError(
            f"{source}: the file holds {nuls:,} NUL bytes: it looks like 'Unicode' "
            "(UTF-16) text, not a MED-PC data file as MED-PC writes it.",
            reason_code=Reason.UNREADABLE_ENCODING.value,
            path=source,
            hint=_SAVE_AS,
        )
    if len(content) > limits.max_line_chars and _maybe_long_line(content, limits.max_line_chars):
        raw = np.frombuffer(content, dtype=np.uint8)
        ends = np.flatnonzero((raw == 10) | (raw == 13))
        bounds = np.concatenate(([-1], ends, [len(raw)]))
        gaps = np.diff(bounds) - 1
        worst = int(np.argmax(gaps))
        if gaps[worst] > limits.max_line_chars:
            start = int(bounds[worst]) + 1
            raise _fail(
                Reason.TOO_LARGE,
                f"line {_byte_line(content, start)} is {int(gaps[worst]):,} characters long; "
                f"no MED-PC line is longer than {limits.max_line_chars:,}.",
                source,
                _byte_line(content, start),
            )
    return content, padded


def _maybe_long_line(content: bytes, limit: int) -> bool:
    """Tell whether a line of ``content`` may be longer than ``limit`` bytes (False: none is).

    A line of more than ``limit`` bytes holds a whole window of ``limit // 2`` bytes
    (counted from the start of the file) without a line end: each window is looked
    through only up to its first line end.
    """
    width = max(1, limit // 2)
    find = content.find
    for start in range(0, len(content) - width + 1, width):
        if find(b"\n", start, start + width) < 0 and find(b"\r", start, start + width) < 0:
            return True
    return False


def _decode(content: bytes) -> tuple[str, str]:
    """Decode as UTF-8, else cp1252, else latin-1 (which never fails)."""
    for codec in ("utf-8", "cp1252"):
        try:
            return content.decode(codec), codec
        except UnicodeDecodeError:
            continue
    return content.decode("latin-1"), "latin-1"


def _newline_style(content: bytes) -> str:
    """Name the line ends of the file's non-blank lines: CRLF, LF, CR or mixed.

    The blank lines of MED-PC's block framing (a bare LF, then CR CR LF) do not count.
    """
    if b"\r" not in content:
        return "LF"
    if b"\n" not in content:
        return "CR"
    if len(content) < _SMALL_NEWLINE_BYTES and b"\x01" not in content:
        # With CR LF written as \x01, a line end ends a non-blank line when the byte
        # before it is not a line-end byte (or it opens the file).
        t = content.replace(b"\r\n", b"\x01")
        kinds = []
        for name, end in (("CRLF", 1), ("LF", 10), ("CR", 13)):
            i = t.find(end)
            while i >= 0:
                if i == 0 or t[i - 1] not in (1, 10, 13):
                    kinds.append(name)
                    break
                i = t.find(end, i + 1)
        if len(kinds) == 1:
            return kinds[0]
        return "mixed" if kinds else "CRLF"
    raw = np.frombuffer(content, dtype=np.uint8)
    at = np.flatnonzero((raw == 10) | (raw == 13))  # every CR and LF, in order
    byte = raw[at]
    # Adjacent to another CR/LF byte?
    prev_adj = np.concatenate(([False], at[1:] == at[:-1] + 1))
    next_adj = np.concatenate((at[1:] == at[:-1] + 1, [False]))
    is_cr = byte == 13
    next_is_lf = np.concatenate((byte[1:] == 10, [False])) & next_adj
    # A line end is a CR (with the LF after it, if any) or an LF not after a CR; it ends a
    # non-blank line when the byte before it is not a CR/LF byte.
    content_end = ~prev_adj
    crlf = int(np.count_nonzero(content_end & is_cr & next_is_lf))
    cr = int(np.count_nonzero(content_end & is_cr & ~next_is_lf))
    lf = int(np.count_nonzero(content_end & ~is_cr))
    kinds = [name for name, n in (("CRLF", crlf), ("LF", lf), ("CR", cr)) if n]
    if len(kinds) == 1:
        return kinds[0]
    return "mixed" if kinds else "CRLF"


# ---------------------------------------------------------------------------------------
# Text -> sessions
# ---------------------------------------------------------------------------------------


def _who(header: dict[str, str], block: int, line: int) -> str:
    """Name a block for a lab tech: its box and subject when known."""
    box, subject = header.get("Box"), header.get("Subject")
    if box and subject:
        return f"session for box {box} (subject {subject})"
    if box:
        return f"session for box {box}"
    if subject:
        return f"session for subject {subject}"
    return f"session block {block + 1} (line {line})"


def _line_of(text: str, pos: int) -> int:
    """Return the 1-based line of ``pos`` in the text (which starts with an extra line end)."""
    return max(1, text.count("\n", 0, pos))


def _parse_header(
    text: str, start: int, end: int
) -> tuple[dict[str, str], list[tuple[str, int]], int | None]:
    """Read the header lines in ``text[start:end]``.

    Returns the fields, the comment lines (text, position) and the position of the first
    line that is not a header line (``None`` when every line was).
    """
    if _QUICK_HEADER and 0 < start < end <= len(text) and text[start - 1] == text[end - 1] == "\n":
        # The usual header: every line a `Name: value` field, no comment, no blank line,
        # no name twice. One regex pass; anything else is read line by line below.
        head = text[start - 1 : end - 1]
        if "\\" not in head:
            fields = _HEADER_LINE_RE.findall(head)
            quick = {name: value.strip() for name, value in fields}
            if len(quick) == len(fields) == head.count("\n"):
                return quick, [], None
    header: dict[str, str] = {}
    comments: list[tuple[str, int]] = []
    pos = start
    for line in text[start:end].split("\n"):
        here = pos
        pos += len(line) + 1
        if not line.strip():
            continue
        if line.startswith("\\"):
            comments.append((line[1:], here))
            continue
        match = _HEADER_RE.fullmatch(line)
        if match is None:
            return header, comments, here
        name = match.group(1)
        if name in header:
            raise _BlockError(Reason.BAD_HEADER, here, f"has the header field {name!r} twice")
        header[name] = match.group(2).strip()
    return header, comments, None


def _strip_comments(segment: str, comments: list[tuple[str, int]], base: int) -> str:
    """Collect the comment lines of ``segment`` and blank them (line numbers stay)."""
    if "\\" not in segment:
        return segment
    for match in _COMMENT_RE.finditer(segment):
        comments.append((match.group(1), base + match.start()))
    return _COMMENT_RE.sub("", segment)


def _parse_scalar(letter: str, raw: str, pos: int) -> float:
    value = raw.strip()
    if _NUMBER_RE.fullmatch(value) is None or not math.isfinite(float(value)):
        raise _BlockError(
            Reason.BAD_VALUE, pos, f"has {value[:40]!r} as the value of {letter}, not a number"
        )
    return float(value)


def _row_chunks(segment: str) -> list[tuple[int, str]]:
    """Split ``segment`` at line ends into pieces of about _CHUNK_CHARS characters."""
    if len(segment) <= _CHUNK_CHARS:
        return [(0, segment)]
    chunks: list[tuple[int, str]] = []
    start = 0
    while start < len(segment):
        cut = segment.find("\n", start + _CHUNK_CHARS)
        stop = len(segment) if cut < 0 else cut + 1
        chunks.append((start, segment[start:stop]))
        start = stop
    return chunks


def _diagnose_rows(letter: str, segment: str, base: int, done: int) -> _BlockError:
    """Find the first bad line of an array's rows, line by line (the slow path).

    ``done`` is the number of values read before ``segment``.
    """
    pos = base
    count = done
    for line in segment.split("\n"):
        here = pos
        pos += len(line) + 1
        if not line.strip():
            continue
        label, colon, rest = line.partition(":")
        label = label.strip()
        if not colon or not label.isdigit() or not label.isascii():
            return _BlockError(
                Reason.BAD_VALUE,
                here,
                f"has a line in array {letter} that is not an array row: {line.strip()[:40]!r}",
            )
        values = rest.split()
        for value in values:
            if _NUMBER_RE.fullmatch(value) is None:
                return _BlockError(
                    Reason.BAD_VALUE,
                    here,
                    f"has {value[:40]!r} in array {letter} (row {label}:), not a number",
                )
        if len(label) > 12 or int(label) != count:
            return _BlockError(
                Reason.BAD_VALUE,
                here,
                f"has a gap in array {letter}: row {label[:20]}: follows {count} values "
                f"(the label should be {count}:)",
            )
        if not values:
            return _BlockError(
                Reason.BAD_VALUE, here, f"has an empty row {label}: in array {letter}"
            )
        count += len(values)
    return _BlockError(Reason.BAD_VALUE, base, f"has rows in array {letter} that cannot be read")


#: Arrays shorter than this (in characters) are read row by row in Python: for a few
#: rows that costs less than setting up the bulk conversion.
_SMALL_ARRAY_CHARS = 2048


def _parse_small_rows(segment: str, limits: Limits) -> np.ndarray | None:
    r"""Read a short, well-formed array's rows; return None on any doubt.

    Accepts exactly what :func:`_parse_rows`' bulk path accepts (``label: values`` lines,
    ``[ \t]*digits:`` labels equal to the number of values before them, ASCII values
    that ``float`` reads and that are finite), so both give the same array; whatever it
    does not accept goes to the bulk path, which names the problem.
    """
    read = _small_arrays([segment], limits)
    return None if read is None else read[0]


def _small_arrays(segments: Sequence[str], limits: Limits) -> list[np.ndarray] | None:
    """Read several short arrays row by row with one conversion; None on any doubt."""
    tokens: list[str] = []
    ends: list[int] = []
    for segment in segments:
        if not segment.isascii() or "_" in segment:
            return None
        first = len(tokens)
        for line in segment.split("\n"):
            label, colon, rest = line.partition(":")
            if not colon:
                if line.strip():
                    return None
                continue
            values = rest.split()
            if (
                not values
                or ":" in rest
                or not label.lstrip(" \t").isdigit()
                or int(label) != len(tokens) - first
            ):
                return None
            tokens.extend(values)
        if len(tokens) - first > limits.max_array_values:
            return None
        ends.append(len(tokens))
    try:
        flat = np.array(list(map(float, tokens)), dtype=np.float64)
    except ValueError:
        return None
    if not np.isfinite(flat).all():
        return None
    return [flat[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]


#: Powers of ten, exact as int64 and as float64.
_POW10_INT = 10 ** np.arange(19, dtype=np.int64)
_POW10_FLOAT = 10.0 ** np.arange(23)
#: Read arrays' rows with :func:`_vector_rows` (tests switch it off to compare paths).
_VECTOR_ROWS = True
_NO_VALUES = np.empty(0, dtype=np.float64)
#: An array left for a bulk read: its session's variables, letter, rows and their place.
_Pending = tuple[dict[str, Value], str, str, int]


def _vector_rows(segments: Sequence[str], bases: Sequence[int]) -> list[np.ndarray] | None:
    r"""Read the rows of well-formed ASCII arrays with numpy alone; return None on any doubt.

    Each value is read as the integer of its digits times or over a power of ten
    (``-12.345`` is ``-(12345 / 10**3)``, ``1.5E2`` is ``15 * 10**1``). With the integer
    at most 2**53 and the power at most 10**22, both are exact doubles and IEEE
    multiplication and division round correctly, so the result is the double nearest the
    decimal: exactly what ``float`` gives (Clinger's fast path). Rows must be
    ``[ \t]*label: values``, the label the number of values before it in its segment
    (plus the segment's entry in ``bases``: a continued array); values
    ``[-+]?digits[.digits][E[-+]digits]``, at most 18 characters before the exponent.
    Anything else returns None, and the general path reads (or names) it. The segments
    (ASCII, without ``_``) are read in one go: a few dozen numpy calls for all of them.
    """
    text = "\n" + "\n".join(segments) + "\n"
    b = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    newline = b == 10
    colon = b == 58
    sep = newline | colon | (b == 32) | (b == 9)
    issign = (b == 45) | (b == 43)
    n_dots = int(np.count_nonzero(b == 46))
    n_signs = int(np.count_nonzero(issign))
    edge = np.diff(sep.view(np.int8))  # -1: a token starts next; +1: one ends next
    starts = np.flatnonzero(edge == -1) + 1
    ends = np.flatnonzero(edge == 1) + 1
    n_tokens = len(starts)
    # Each line's first token is its label, followed at once by the line's only colon.
    is_label = b[ends] == 58
    first = np.zeros(n_tokens + 1, dtype=bool)
    first[np.searchsorted(starts, np.flatnonzero(newline))] = True
    labels = np.flatnonzero(is_label)
    if (
        not n_tokens
        or not np.array_equal(first[:n_tokens], is_label)
        or int(np.count_nonzero(colon)) != len(labels)
        or np.any(np.diff(np.append(labels, n_tokens)) < 2)  # a row without values
        or int((ends - starts).max()) > 24
    ):
        return None
    # An exponent (1.5E2, 3e-1): the digits part ends at the E; the power is read apart.
    power = np.zeros(n_tokens, dtype=np.int64)
    digits_end = ends
    e_at = np.flatnonzero((b == 69) | (b == 101))
    if len(e_at):
        owner = np.searchsorted(ends, e_at, side="right")
        if np.any(np.diff(owner) == 0):
            return None
        e_sign = issign[e_at + 1]
        e_first = e_at + 1 + e_sign
        e_len = ends[owner] - e_first
        if int(e_len.min()) < 1 or int(e_len.max()) > 3:
            return None
        exponent = np.zeros(len(e_at), dtype=np.int64)
        for k in range(3):  # the exponent's digits, left to right
            more = e_len > k
            digit = b[np.where(more, e_first + k, 0)] - np.uint8(48)
            if np.any(more & (digit >= 10)):
                return None
            exponent = np.where(more, exponent * 10 + digit, exponent)
        power[owner] = np.where(b[e_at + 1] == 45, -exponent, exponent)
        digits_end = ends.copy()
        digits_end[owner] = e_at
        n_signs -= int(np.count_nonzero(issign[e_at + 1]))
    signed = issign[starts]
    length = digits_end - starts
    if int(np.count_nonzero(signed)) != n_signs or int(length.max()) > 18:
        return None  # a sign inside a number, or a number too long for the fast path
    frac = np.zeros(n_tokens, dtype=np.int64)
    dotted = np.zeros(n_tokens, dtype=bool)
    if n_dots * 8 < n_tokens:
        # Few dots (integer rows): find each dot's token.
        dots = np.flatnonzero(b == 46)
        owner = np.searchsorted(ends, dots, side="right")
        back = digits_end[owner] - 1 - dots
        if np.any(np.diff(owner) == 0) or np.any(back < 0):
            return None  # two dots in a token, or a dot in the exponent
        frac[owner] = back
        dotted[owner] = True
    else:
        # Mostly decimals: each token's dot, looked for 0, 1, 2 ... characters before
        # its digits end (all of %.3f's in four passes).
        found = 0
        for back in range(18):
            if found == n_dots:
                break
            at = digits_end - 1 - back
            hit = (b[at] == 46) & (at >= starts) & ~dotted
            frac[hit] = back
            dotted |= hit
            found += int(np.count_nonzero(hit))
        if found != n_dots:
            return None  # two dots in a token, or a dot in the exponent
    if np.any((dotted | signed)[labels]) or np.any(power[labels]):
        return None  # a label that is not bare digits
    # Tokens of one shape (length, dot place, sign) have their digits in the same columns.
    shape = (length * 32 + np.where(dotted, frac, 31)) * 2 + signed
    mantissa = np.empty(n_tokens, dtype=np.int64)
    for key in np.flatnonzero(np.bincount(shape)):
        width, back, sign = int(key) // 64, int(key) // 2 % 32, int(key) % 2
        cols = np.arange(sign, width)
        if back != 31:
            cols = cols[cols != width - 1 - back]
        which = np.flatnonzero(shape == key)
        window = b[starts[which][:, None] + cols] - np.uint8(48)
        if not len(cols) or np.any(window >= 10):
            return None  # no digit, or a character that is not one
        mantissa[which] = window @ _POW10_INT[len(cols) - 1 :: -1]
    scale = power - frac
    if int(mantissa.max()) > 2**53 or int(np.abs(scale).max()) > 22:
        return None
    values = mantissa.astype(np.float64)
    down = scale < 0
    if down.any():
        values[down] /= _POW10_FLOAT[-scale[down]]
    up = scale > 0
    if up.any():
        values[up] *= _POW10_FLOAT[scale[up]]
    negative = b[starts] == 45
    if negative.any():
        values[negative] = -values[negative]  # -0.000 stays -0.0, as float("-0.000")
    # Row r is preceded by labels[r] - r values in all; its segment's first row by as many
    # as that segment's values start after.
    before = labels - np.arange(len(labels))
    seg_starts = np.cumsum([1] + [len(seg) + 1 for seg in segments[:-1]])
    seg_of_row = np.searchsorted(seg_starts, starts[labels], side="right") - 1
    if not np.all(np.bincount(seg_of_row, minlength=len(segments))):
        return None  # a segment without rows
    first_row = np.searchsorted(seg_of_row, np.arange(len(segments)))
    offset = before[first_row] - np.asarray(bases, dtype=np.int64)
    if not np.array_equal(values[labels], before - offset[seg_of_row]):
        return None
    flat = np.delete(values, labels)
    bounds = [*before[first_row[1:]].tolist(), len(flat)]
    return [flat[a:b] for a, b in zip([0, *bounds[:-1]], bounds, strict=True)]


def _parse_rows(letter: str, segment: str, base: int, limits: Limits) -> np.ndarray:
    """Convert the rows of one array (``segment`` = the lines after its letter line).

    The labels are checked and all values converted in bulk; on any doubt the rows are
    re-read one by one to name the bad line.
    """
    if len(segment) < _SMALL_ARRAY_CHARS:
        small = _parse_small_rows(segment, limits)
        if small is not None:
            return small
    parts: list[np.ndarray] = []
    done = 0
    for offset, chunk in _row_chunks(segment):
        # float() takes what rows never hold: non-ASCII digits, "1_000", "nan", "inf".
        if not chunk.isascii() or "_" in chunk:
            raise _diagnose_rows(letter, chunk, base + offset, done)
        read = _vector_rows([chunk], [done]) if _VECTOR_ROWS else None
        if read is not None:
            fast = read[0]
            if done + len(fast) > limits.max_array_values:
                raise _BlockError(
                    Reason.TOO_LARGE,
                    base + offset,
                    f"has more than {limits.max_array_values:,} values in array {letter}",
                )
            parts.append(fast)
            done += len(fast)
            continue
        # Every non-blank line must be `label: values`; glued labels (`0:11`) split too.
        rows = list(map(str.split, chunk.replace(":", " ").split("\n")))
        counts = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        counts = counts[counts > 0]
        n_rows = len(counts)
        if (
            chunk.count(":") != n_rows
            or len(_LABEL_RE.findall("\n" + chunk)) != n_rows
            or np.any(counts < 2)
        ):
            raise _diagnose_rows(letter, chunk, base + offset, done)
        n_values = int(counts.sum()) - n_rows
        if done + n_values > limits.max_array_values:
            raise _BlockError(
                Reason.TOO_LARGE,
                base + offset,
                f"has more than {limits.max_array_values:,} values in array {letter}",
            )
        tokens = itertools.chain.from_iterable(rows)
        try:
            flat = np.fromiter(map(float, tokens), dtype=np.float64, count=n_values + n_rows)
        except ValueError:
            raise _diagnose_rows(letter, chunk, base + offset, done) from None
        # Row i's label sits at flat index starts[i] and must equal the number of values
        # before it: starts[i] - i labels came earlier.
        starts = np.cumsum(counts) - counts
        expected = starts - np.arange(n_rows) + done
        if not np.array_equal(flat[starts], expected) or not np.all(np.isfinite(flat)):
            raise _diagnose_rows(letter, chunk, base + offset, done)
        keep = np.ones(len(flat), dtype=bool)
        keep[starts] = False
        parts.append(flat[keep])
        done += n_values
    if not parts:
        return np.empty(0, dtype=np.float64)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


@dataclass(slots=True)
class _Block:
    """Where one block lies in the text, and the ``File:`` line that applies to it."""

    start: int
    end: int
    line: int
    file_line: str | None


#: A block whose arrays hold at least this many characters has them read in one
#: :func:`_vector_rows` call (below it, row by row costs less).
_BATCH_MIN_CHARS = 4096


def _parse_block(text: str, block: _Block, index: int, limits: Limits) -> RawSession:
    """Read one block; raise _BlockError naming what is wrong and where.

    The block's arrays are first read together in bulk; on any doubt (a bad row, a value
    the bulk reader does not take) the block is read again array by array, in order, so
    that the first problem is the one named.
    """
    if _VECTOR_ROWS:
        try:
            session, pending = _read_block(text, block, index, limits, batch=True)
        except _BlockError:
            pending = None
        if pending is not None and _fill_all(pending, limits):
            return session
    return _read_block(text, block, index, limits, batch=False)[0]


def _fill_all(pending: list[_Pending], limits: Limits) -> bool:
    """Read the pending arrays into their sessions' variables; False when in doubt."""
    if not pending:
        return True
    arrays = _read_arrays(pending, limits)
    if arrays is None:
        return False
    for (variables, letter, _, _), values in zip(pending, arrays, strict=True):
        variables[letter] = values
    return True


def _read_arrays(pending: list[_Pending], limits: Limits) -> list[np.ndarray] | None:
    """Read pending arrays in bulk; None when one of them is in doubt."""
    if any("_" in segment for _, _, segment, _ in pending):
        return None
    total = sum(len(segment) for _, _, segment, _ in pending)
    if total < _BATCH_MIN_CHARS:
        return _small_arrays([segment for _, _, segment, _ in pending], limits)
    arrays: list[np.ndarray] = []
    group: list[str] = []
    size = 0
    for i, (_, _, segment, _) in enumerate(pending):
        group.append(segment)
        size += len(segment)
        if size >= _CHUNK_CHARS or i == len(pending) - 1:
            read = _vector_rows(group, [0] * len(group))
            if read is None or any(len(a) > limits.max_array_values for a in read):
                return None
            arrays.extend(read)
            group, size = [], 0
    return arrays


def _read_block(
    text: str, block: _Block, index: int, limits: Limits, *, batch: bool
) -> tuple[RawSession, list[_Pending]]:
    """Read one block; with ``batch``, leave its ASCII arrays pending (see :func:`_fill_all`)."""
    first_var = _VAR_RE.search(text, block.start, block.end)
    head_end = first_var.start(1) if first_var else block.end
    header, comments, stray = _parse_header(text, block.start, head_end)
    if block.file_line is not None:
        header = {"File": block.file_line, **header}
    try:
        if "\x00" in text[block.start : block.end]:
            at = text.index("\x00", block.start, block.end)
            raise _BlockError(Reason.BAD_VALUE, at, "holds NUL bytes (the file is damaged here)")
        if stray is not None:
            line = text[stray : text.find("\n", stray, head_end) % (head_end + 1)]
            if _ROW_START_RE.match(line):
                raise _BlockError(
                    Reason.BAD_VALUE, stray, "has array rows before any variable letter"
                )
            raise _BlockError(
                Reason.BAD_HEADER,
                stray,
                f"has a line that is neither a header field nor a variable: {line.strip()[:40]!r}",
            )
        if first_var is None:
            raise _BlockError(
                Reason.BAD_HEADER, block.start, "has a header but no variables", incomplete=True
            )
        missing = [name for name in _IDENTITY if name not in header]
        if missing:
            raise _BlockError(
                Reason.BAD_HEADER,
                block.start,
                f"has no {', '.join(missing)} in its header; labpipe cannot tell which "
                "session this is",
            )
        variables: dict[str, Value] = {}
        pending: list[_Pending] = []  # arrays read later, together
        matches = list(_VAR_RE.finditer(text, first_var.start(), block.end))
        if len(matches) > 26 * 4:
            raise _BlockError(Reason.BAD_VALUE, matches[0].start(1), "has too many variables")
        for i, match in enumerate(matches):
            letter, raw = match.group(1), match.group(2)
            seg_start = match.end() + 1
            seg_end = matches[i + 1].start() if i + 1 < len(matches) else block.end
            segment = text[seg_start:seg_end] if seg_start < seg_end else ""
            segment = _strip_comments(segment, comments, seg_start)
            if letter in variables:
                raise _BlockError(
                    Reason.BAD_VALUE, match.start(1), f"has the variable {letter} twice"
                )
            if raw.strip():
                variables[letter] = _parse_scalar(letter, raw, match.start(1))
                if segment.strip():
                    off = len(segment) - len(segment.lstrip())
                    raise _BlockError(
                        Reason.BAD_VALUE,
                        seg_start + off,
                        f"has unexpected text after the scalar {letter}: {segment.strip()[:40]!r}",
                    )
            elif segment.strip():
                if batch and len(segment) <= _CHUNK_CHARS and segment.isascii():
                    pending.append((variables, letter, segment, seg_start))
                    variables[letter] = _NO_VALUES  # read below, with the others
                else:
                    variables[letter] = _parse_rows(letter, segment, seg_start, limits)
            else:
                variables[letter] = np.empty(0, dtype=np.float64)
    except _BlockError as exc:
        exc.header = header
        raise
    session = RawSession(
        header=header,
        variables=variables,
        block=index,
        line=block.line,
        comments=tuple(c for c, _ in sorted(comments, key=lambda c: c[1])),
    )
    return session, pending


def _cut_place(text: str, block: _Block) -> str:
    """Describe where a cut-off block stops ("in the middle of array E (row 340:)")."""
    last_var = None
    for last_var in _VAR_RE.finditer(text, block.start, block.end):  # noqa: B007
        pass
    if last_var is None:
        return "in its header"
    letter = last_var.group(1)
    if last_var.group(2).strip():
        return f"at the scalar {letter}"
    tail = text[last_var.end() : block.end].rstrip()
    last_line = tail[tail.rfind("\n") + 1 :]
    label, colon, _ = last_line.partition(":")
    if colon and label.strip().isdigit():
        return f"in the middle of array {letter} (row {label.strip()}:)"
    return f"at the start of array {letter}"


def _find_blocks(text: str, source: str, limits: Limits) -> tuple[list[_Block], int]:
    """Find the session blocks; return them and where the first one starts."""
    blocks: list[_Block] = []
    file_line: str | None = None
    first = len(text)
    line = 0
    counted = 0
    for match in _BLOCK_RE.finditer(text):
        if blocks and blocks[-1].end == len(text):
            blocks[-1].end = match.start()
        if match.group(1) == "File":
            file_line = match.group(2).strip()
            continue
        if len(blocks) >= limits.max_blocks:
            raise _fail(
                Reason.TOO_LARGE,
                f"the file holds more than {limits.max_blocks:,} session blocks; no MED-PC "
                "file holds that many.",
                source,
            )
        line += text.count("\n", counted, match.start(1))
        counted = match.start(1)
        first = min(first, match.start(1))
        blocks.append(_Block(match.start(1), len(text), line, file_line))
    return blocks, first


def parse_medpc(
    data: bytes, *, source: str = "<bytes>", limits: Limits = DEFAULT_LIMITS
) -> ParsedFile:
    """Read every session of a MED-PC data file from its bytes.

    Parameters
    ----------
    data
        The file's bytes.
    source
        The file's name, used in messages.
    limits
        Caps on size; see :class:`Limits`.

    Returns
    -------
    ParsedFile
        The complete sessions in file order, the blocks that could not be read (each a
        :class:`~labpipe.model.BlockProblem`), the codec and the line-end style.

    Raises
    ------
    MedPCFormatError
        When no session can be read at all, with ``reason_code`` ``EMPTY_FILE``,
        ``NOT_MEDPC``, ``BAD_HEADER``, ``UNREADABLE_ENCODING``, ``TOO_LARGE`` or that of
        the file's only block. No other exception escapes for any input.
    """
    try:
        return _parse(data, source, limits)
    except MedPCFormatError:
        raise
    except (MemoryError, RecursionError) as exc:  # a cap was not tight enough: refuse
        raise _fail(
            Reason.TOO_LARGE, f"the file is too large to read ({type(exc).__name__}).", source
        ) from None


def _parse(data: bytes, source: str, limits: Limits) -> ParsedFile:
    if _STANDARD and len(data) <= _STANDARD_MAX_BYTES:
        parsed = _parse_standard(data, limits)
        if parsed is not None:
            return parsed
    content, padded = _check_bytes(data, source, limits)
    newline = _newline_style(content)
    # Line ends normalised on the bytes: CR and LF are one byte, and never part of
    # another character, in each codec _decode tries.
    lines = content
    if lines.find(b"\r") >= 0:
        lines = lines.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    text, codec = _decode(lines)
    text = "\n" + text
    # Every complete MED-PC file ends with a line end; NUL padding stands for lost data.
    tail_at = text.rfind("\n") + 1
    tail = text[tail_at:]
    cut = padded or (bool(tail) and not tail.startswith("\\"))
    # A CRLF file ending in a lone CR was cut between the CR and the LF.
    cut = cut or (content.endswith(b"\r") and b"\r\n" in content)
    lost_line = None
    if tail and "Start Date:".startswith(tail) and text.endswith("\n\n" + tail):
        # Cut in the first line of a new block (blocks follow a blank line; variable lines
        # never do): the block before is whole, the new one is lost.
        lost_line = _line_of(text, tail_at)
        text = text[:tail_at]
        cut = False
    blocks, first = _find_blocks(text, source, limits)
    stray_var = _VAR_RE.search(text, 0, first)
    prelude = _BLOCK_RE.sub("", _strip_comments(text[:first], [], 0))
    if not blocks:
        if stray_var is not None:
            raise _fail(
                Reason.BAD_HEADER,
                "the file has MED-PC variables but no Start Date/Subject/Box header; "
                "labpipe cannot tell which session this is.",
                source,
                _line_of(text, stray_var.start(1)),
            )
        raise _fail(
            Reason.NOT_MEDPC,
            "this is not a MED-PC data file: it has no 'Start Date:' line and no variables.",
            source,
        )
    sessions: list[RawSession] = []
    problems: list[BlockProblem] = []
    offset = 0
    if prelude.strip():
        # Data before the first Start Date: a block whose header was stripped.
        head = text[:first]
        at = stray_var.start(1) if stray_var else len(head) - len(head.lstrip())
        problems.append(
            BlockProblem(
                block=0,
                line=_line_of(text, at),
                reason=Reason.BAD_HEADER,
                message=f"{source}: the data before line {blocks[0].line} have no Start Date/"
                "Subject/Box header; labpipe cannot tell which session they are.",
            )
        )
        offset = 1
    drafts = _draft_blocks(text, blocks, offset, limits)
    for i, block in enumerate(blocks):
        index = i + offset
        last = i == len(blocks) - 1
        try:
            session = drafts[i] or _parse_block(text, block, index, limits)
        except _BlockError as exc:
            header = exc.header
            who = _who(header, index, block.line)
            if last and (cut or exc.incomplete):
                problems.append(_truncated(text, block, index, header, source, padded))
            else:
                problems.append(
                    BlockProblem(
                        block=index,
                        line=_line_of(text, exc.pos),
                        reason=exc.reason,
                        message=f"{source}: line {_line_of(text, exc.pos)}: the {who} "
                        f"{exc.message}.",
                        header=header,
                    )
                )
            continue
        if last and (cut or _stops_short(session, sessions)):
            problems.append(_truncated(text, block, index, dict(session.header), source, padded))
            continue
        sessions.append(session)
    if lost_line is not None:
        problems.append(
            BlockProblem(
                block=len(blocks) + offset,
                line=lost_line,
                reason=Reason.TRUNCATED_BLOCK,
                message=f"{source}: line {lost_line}: the file ends at the start of a new "
                "session block, so that session is lost; the file is cut off — was the "
                "MED-PC computer shut down, or is MED-PC still writing the file?",
            )
        )
    if not sessions and len(problems) == 1:
        only = problems[0]
        raise MedPCFormatError(
            only.message, reason_code=only.reason.value, path=source, line=only.line
        )
    return ParsedFile(
        sessions=tuple(sessions), problems=tuple(problems), encoding=codec, newline=newline
    )


def _draft_blocks(
    text: str, blocks: list[_Block], offset: int, limits: Limits
) -> list[RawSession | None]:
    """Read the blocks with all their arrays in bulk at once; None for blocks to redo."""
    if not _VECTOR_ROWS or len(blocks) < 2:
        return [None] * len(blocks)
    drafts: list[RawSession | None] = []
    pending: list[_Pending] = []
    for i, block in enumerate(blocks):
        try:
            session, todo = _read_block(text, block, i + offset, limits, batch=True)
        except _BlockError:
            drafts.append(None)
            continue
        drafts.append(session)
        pending.extend(todo)
    if not _fill_all(pending, limits):
        return [None] * len(blocks)
    return drafts


# ---------------------------------------------------------------------------------------
# Small standard files: a lean reader for the usual layout
# ---------------------------------------------------------------------------------------

#: Try :func:`_parse_standard` before the general reader (tests switch it off to compare).
_STANDARD = True
#: Larger files go straight to the general reader.
_STANDARD_MAX_BYTES = 1 << 16
# The lean reader works on the bytes: line ends normalised to b"\n" and one b"\n" put in
# front, as _parse does with the text. Its patterns are _BLOCK_RE's, _VAR_RE's and
# _HEADER_LINE_RE's, on bytes.
_STD_BLOCK_SPLIT = re.compile(rb"\nStart Date[ \t]*:")
_STD_VAR_SPLIT = re.compile(rb"\n([A-Z]):([^\n]*)")
_STD_FIELD_RE = re.compile(rb"\n([A-Za-z][A-Za-z ]*[A-Za-z])[ \t]*:([^\n]*)")
#: A header as MED-PC writes it (HEADER_FIELDS, in order; "Start Date:" is split off
#: before): its values, read in one match.
_STD_HEAD_RE = re.compile(
    rb"([^\n]*)\nEnd Date:([^\n]*)\nSubject:([^\n]*)\nExperiment:([^\n]*)\nGroup:([^\n]*)"
    rb"\nBox:([^\n]*)\nStart Time:([^\n]*)\nEnd Time:([^\n]*)\nMSN:([^\n]*)"
)
#: The text before the first block, when not blank: blank lines around one `File:` line.
_STD_PRELUDE = re.compile(rb"(?:\n[ \t]*)*\nFile[ \t]*:([^\n]*)(?:\n[ \t]*)*")
#: MED-PC's framing before a block (the CR LF ending a line, LF, CR, CR LF), and four CR LF
#: line ends in its place: the same four line ends.
_STD_FRAMING = (b"\r\n\n\r\r\n", b"\r\n\r\n\r\n\r\n")
#: The bytes that start a character of two or more bytes in UTF-8.
_UTF8_LEADS = bytes(range(0xC2, 0xF5))
#: Row labels of arrays of k values a row, by k: [b"0:", b"5:", b"10:", ...] for k = 5.
_STD_ROW_LABELS: dict[int, list[bytes]] = {}


def _row_labels(k: int, n: int) -> list[bytes]:
    """Return the labels of ``n`` rows or more of ``k`` values (cached for usual sizes)."""
    labels = _STD_ROW_LABELS.get(k)
    if labels is None or len(labels) < n:
        labels = list(map(b"%d:".__mod__, range(0, max(n, 64) * k, k)))
        if k <= 16 and n <= 4096:
            _STD_ROW_LABELS[k] = labels
    return labels


def _standard_lines(data: bytes) -> tuple[bytes, str]:
    r"""Return ``data`` with its line ends normalised to b"\n", and :func:`_newline_style`.

    Normalises as :func:`_parse` does (CR LF, then each lone CR, is one b"\n"). A file
    whose line ends are all CR LF, but for MED-PC's framing before a block (whose lone LF
    and CR end blank lines), is "CRLF" at once.
    """
    if data.find(b"\r") < 0:
        return data, "LF"
    text = data.replace(*_STD_FRAMING).replace(b"\r\n", b"\x00")  # (no NUL in data)
    if text.find(b"\r") >= 0 or text.find(b"\n") >= 0:
        return text.replace(b"\r", b"\n").replace(b"\x00", b"\n"), _newline_style(data)
    return text.replace(b"\x00", b"\n"), "CRLF"


def _standard_decode(values: bytes) -> tuple[str, str]:
    """Decode the header values as :func:`_decode` decodes their file (see the caller)."""
    if values.isascii():
        return values.decode("ascii"), "utf-8"
    if len(values.translate(None, _UTF8_LEADS)) == len(values):
        # Other than ASCII, and no UTF-8 lead byte: not UTF-8. Skip trying (and failing).
        try:
            return values.decode("cp1252"), "cp1252"
        except UnicodeDecodeError:
            return values.decode("latin-1"), "latin-1"
    return _decode(values)


def _parse_standard(data: bytes, limits: Limits) -> ParsedFile | None:
    r"""Read a file laid out as MED-PC writes it, quickly; None for anything else.

    Takes blank lines around an optional ``File:`` line, then blocks: a ``Start Date:``
    line and more ``Name: value`` header lines; variables, each a scalar ``X: value`` or
    an array ``X:`` with rows ``[ \t]*label: values`` of ``k`` values each (the last row 1
    to ``k``) labelled ``0:``, ``k:``, ``2k:`` ...; blank lines only at the end of a block
    (the framing before the next one); a line end at the end of the file; ASCII outside
    the header values. Splits pull the fields and values out, and one ``float`` map
    converts every value. What it takes, the general reader reads without a problem into
    the same sessions, bit for bit; anything else (comments, NUL bytes, a byte-order mark,
    a cut-off or short last block, a missing identity field, a name or letter twice, an
    unusual row or number, a value that is not finite...) returns None, and the general
    reader reads it or names what is wrong.
    """
    if (
        len(data) > min(limits.max_file_bytes, limits.max_line_chars, limits.max_array_values)
        # A complete file ends with a line end (a CR LF file, with CR LF).
        or not data.endswith((b"\n", b"\r"))
        or (data.endswith(b"\r") and data.find(b"\r\n") >= 0)
        # (bytes.find, not `in`: `in` first tries its argument as an int, at a cost.)
        or data.find(b"\x00") >= 0  # NUL padding; b"\x00" also stands in for CR LF below
        or data.find(b"\x0b") >= 0  # blanks that bytes.split takes and _small_arrays
        or data.find(b"\x0c") >= 0  # does not take before a row label
    ):
        return None
    lines, newline = _standard_lines(data)
    text = b"\n" + lines
    start = text.find(b"\nStart Date")
    if start < 0:
        return None
    if text.find(b"\nStart Date", start + 11) < 0:  # one block: no need for the regex
        opening = _STD_BLOCK_SPLIT.match(text, start)
        if opening is None:
            return None
        parts = [text[:start], text[opening.end() :]]
    else:
        parts = _STD_BLOCK_SPLIT.split(text, limits.max_blocks)
        if len(parts) > limits.max_blocks:
            return None
    file_line = b""
    if parts[0].strip():
        prelude = _STD_PRELUDE.fullmatch(parts[0])
        if prelude is None:
            return None
        file_line = prelude.group(1)
    names: list[str] = []  # the header fields of every block, and their values
    values: list[bytes] = []
    tokens: list[bytes] = []  # the variables' values, all blocks together
    # Per block: where its header fields end in names, its letters, and where each
    # variable's values are in tokens (an index for a scalar, a slice for an array).
    plans: list[tuple[int, str, list[int | slice]]] = []
    for part in parts[1:]:
        pieces = _STD_VAR_SPLIT.split(part)
        head = pieces[0]
        # No variable is BAD_HEADER; float takes "1_0" where _NUMBER_RE does not.
        if len(pieces) < 4 or part.find(b"_", len(head)) >= 0:
            return None
        usual = _STD_HEAD_RE.fullmatch(head)
        if usual is not None:
            names += HEADER_FIELDS
            values += usual.groups()
        else:
            fields = _STD_FIELD_RE.findall(b"\nStart Date:" + head)
            if len(fields) != head.count(b"\n") + 1:
                return None  # a line that is not a field (BAD_HEADER), or a comment
            names += b"\x00".join([name for name, _ in fields]).decode("ascii").split("\x00")
            values += [value for _, value in fields]
        spans: list[int | slice] = []
        for value, rows in zip(map(bytes.strip, pieces[2::3]), pieces[3::3], strict=True):
            start = len(tokens)
            rows = rows.rstrip(b" \t\n")  # the lines up to the next letter, blank ones cut
            if value:  # a scalar: no row may follow it
                if rows:
                    return None
                tokens.append(value)
                spans.append(start)
            elif not rows:  # an array without rows
                spans.append(slice(start, start))
            else:
                # Each row: its label and k values, the last row 1 to k values. Then the
                # first word of each row is every (k+1)-th word, and it must be the label
                # b"0:", b"k:", ... (the number of values before the row).
                row_words = list(map(bytes.split, rows.split(b"\n")))  # [[], [b"0:", ...]
                counts = list(map(len, row_words))
                width = counts[1]
                n_rows = len(counts) - 1
                if not 2 <= counts[-1] <= width or counts[1:-1] != [width] * (n_rows - 1):
                    return None
                words = list(itertools.chain.from_iterable(row_words))
                if words[::width] != _row_labels(width - 1, n_rows)[:n_rows]:
                    return None
                del words[::width]
                tokens += words
                spans.append(slice(start, len(tokens)))
        plans.append((len(names), b"".join(pieces[1::3]).decode(), spans))
    try:
        # On bytes, float takes ASCII numbers as _NUMBER_RE reads them, underscores (none
        # here), "nan" and "inf" (caught below), and nothing else.
        numbers = list(map(float, tokens))
    except ValueError:
        return None
    if not math.isfinite(sum(numbers)):
        return None  # a value too large for a double (or a sum that is: let it be)
    flat = np.fromiter(numbers, np.float64, len(numbers))
    # Every byte but those of the header and File values is ASCII (names, letters, and
    # every value float took): decoding those decodes the file. b"\x00" and b"\n" are one
    # character in each codec, and never part of another.
    texts, codec = _standard_decode(b"\x00".join([*values, file_line]))
    field_values = list(map(str.strip, texts.split("\x00")))
    file_text = field_values.pop()
    sessions: list[RawSession] = []
    line = parts[0].count(b"\n") + 1  # the b"\n" before "Start Date" went with the split
    at = 0
    for index, (end, letters, spans) in enumerate(plans):
        header = dict(zip(names[at:end], field_values[at:end], strict=True))
        # No name twice (BAD_HEADER), nor "File" (it opens a block), nor a letter twice.
        if len(header) != end - at or "File" in header or len(set(letters)) != len(letters):
            return None
        at = end
        if not ("Start Time" in header and "Subject" in header and "Box" in header):
            return None
        if file_line:
            header = {"File": file_text, **header}
        variables = [numbers[s] if s.__class__ is int else flat[s] for s in spans]
        sessions.append(
            RawSession(
                header=header,
                variables=dict(zip(letters, variables, strict=True)),
                block=index,
                line=line,
            )
        )
        if index + 1 < len(plans):
            line += parts[index + 1].count(b"\n") + 1
    if len(sessions) > 1 and _stops_short(sessions[-1], sessions[:-1]):
        return None
    return ParsedFile(sessions=tuple(sessions), problems=(), encoding=codec, newline=newline)


def _stops_short(session: RawSession, earlier: Sequence[RawSession]) -> bool:
    """Tell whether the last block stops short of an earlier block of the same MSN."""
    ref = next((s for s in earlier if s.msn == session.msn), None)
    if ref is None:
        return False
    mine, theirs = list(session.variables), list(ref.variables)
    if len(mine) < len(theirs) and theirs[: len(mine)] == mine:
        return True
    if mine != theirs or not mine:
        return False
    a, b = session.variables[mine[-1]], ref.variables[mine[-1]]
    return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and len(a) < len(b)


def _truncated(
    text: str, block: _Block, index: int, header: dict[str, str], source: str, padded: bool
) -> BlockProblem:
    """Build the BlockProblem of a cut-off last block."""
    end_line = _line_of(text, len(text.rstrip("\n")))
    why = "ends in NUL bytes" if padded else "is cut off"
    return BlockProblem(
        block=index,
        line=end_line,
        reason=Reason.TRUNCATED_BLOCK,
        message=f"{source}: line {end_line}: the {_who(header, index, block.line)} ends "
        f"{_cut_place(text, block)}; the file {why} — was the MED-PC computer shut down, "
        "or is MED-PC still writing the file?",
        header=header,
    )


def read_medpc(path: str | os.PathLike[str], *, limits: Limits = DEFAULT_LIMITS) -> ParsedFile:
    """Read every session of a MED-PC data file.

    The file is opened read-only; a file larger than ``limits.max_file_bytes`` is refused
    before it is read.

    Parameters
    ----------
    path
        The raw file.
    limits
        Caps on size; see :class:`Limits`.

    Returns
    -------
    ParsedFile
        As :func:`parse_medpc`.

    Raises
    ------
    MedPCFormatError
        As :func:`parse_medpc` (``TOO_LARGE`` for a file over the size cap).
    OSError
        The file cannot be opened or read.
    """
    source = os.fspath(path)
    with open(source, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > limits.max_file_bytes:
            raise _fail(
                Reason.TOO_LARGE,
                f"the file is {size:,} bytes; no MED-PC data file is larger than "
                f"{limits.max_file_bytes:,} bytes, so it is not read.",
                source,
            )
        data = fh.read(limits.max_file_bytes + 1)
    return parse_medpc(data, source=source, limits=limits)


# ---------------------------------------------------------------------------------------
# `labpipe inspect`
# ---------------------------------------------------------------------------------------


def _json_value(value: Value) -> float | list[float]:
    if isinstance(value, np.ndarray):
        return [float(v) for v in value.tolist()]
    return float(value)


def inspect_records(parsed: ParsedFile) -> list[dict[str, Any]]:
    """Return the sessions as JSON-ready records (for ``labpipe inspect --json``).

    Lossless: ``json.dumps`` writes floats so that they read back as the same values.

    Parameters
    ----------
    parsed
        A parsed file.

    Returns
    -------
    list of dict
        One record a session, in file order: ``{"block": int, "line": int, "header":
        {field: text}, "variables": {letter: number | [numbers]}, "comments": [text]}``.
        Scalars are floats, arrays lists of floats (every slot). Blocks that could not be
        read are not here; see :func:`inspect_problems`.
    """
    return [
        {
            "block": s.block,
            "line": s.line,
            "header": dict(s.header),
            "variables": {k: _json_value(v) for k, v in s.variables.items()},
            "comments": list(s.comments),
        }
        for s in parsed.sessions
    ]


def inspect_problems(parsed: ParsedFile) -> list[dict[str, Any]]:
    """Return the blocks that could not be read as JSON-ready records.

    Parameters
    ----------
    parsed
        A parsed file.

    Returns
    -------
    list of dict
        ``{"block": int, "line": int, "reason": code, "message": text, "header": {...}}``.
    """
    return [
        {
            "block": p.block,
            "line": p.line,
            "reason": p.reason.value,
            "message": p.message,
            "header": dict(p.header),
        }
        for p in parsed.problems
    ]


def _short(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else f"{value:.0f}"


def describe(parsed: ParsedFile, path: str) -> str:
    """Summarise a parsed file for a person (``labpipe inspect FILE``).

    Parameters
    ----------
    parsed
        A parsed file.
    path
        The file's name, for the first line.

    Returns
    -------
    str
        Per session: the header fields, the scalars with their values, the arrays with
        their length and first and last values; then the blocks that could not be read.
    """
    out = [
        f"{path}: {len(parsed.sessions)} session(s), {len(parsed.problems)} problem(s); "
        f"encoding {parsed.encoding}, line ends {parsed.newline}"
    ]
    for s in parsed.sessions:
        out.append("")
        out.append(f"Session {s.block + 1} (line {s.line})")
        out.extend(f"  {name}: {text}" for name, text in s.header.items())
        scalars = [(k, v) for k, v in s.variables.items() if not isinstance(v, np.ndarray)]
        arrays = [(k, v) for k, v in s.variables.items() if isinstance(v, np.ndarray)]
        if scalars:
            out.append("  scalars: " + "  ".join(f"{k}={_short(v)}" for k, v in scalars))
        for k, v in arrays:
            if len(v) == 0:
                out.append(f"  array {k}: empty")
            else:
                nonzero = int(np.count_nonzero(v))
                out.append(
                    f"  array {k}: {len(v)} values ({nonzero} non-zero), first "
                    f"{_short(v[0])}, last {_short(v[-1])}"
                )
        out.extend(f"  comment: {c}" for c in s.comments)
    for p in parsed.problems:
        out.append("")
        out.append(f"Problem in block {p.block + 1} (line {p.line}) [{p.reason.value}]")
        out.append(f"  {p.message}")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------


def _fmt_number(value: float, decimals: int | None, width: int) -> str:
    """Format one value right-aligned in ``width`` characters (wider when it must be)."""
    if decimals is None:
        if not float(value).is_integer():
            raise ValueError(f"{value!r} is not an integer; use decimals=3 to write it")
        return f"{value:{width}.0f}"
    return f"{value:{width}.{decimals}f}"


def format_medpc(
    sessions: Sequence[RawSession],
    *,
    file_line: str | None = None,
    newline: str = "\r\n",
    columns: int = 5,
    decimals: int | None = 3,
    encoding: str = "cp1252",
) -> bytes:
    r"""Write sessions as a MED-PC IV data file, laid out as MED-PC itself writes them.

    Layout (``newline="\r\n"``)::

        File: C:\MED-PC IV\DATA\box1                <- only when ``file_line`` is given
        \n \r\r\n                                   <- each block opens with a bare LF line
        Start Date: 11/02/23                           and a CR CR LF line, as MED-PC does
        ...                                         <- header fields in HEADER_FIELDS order
        MSN: OXYGWAS 12h
        B:    1513.000                              <- scalar: value right-aligned, width 12
        C:                                          <- array: letter line, then rows
             0:      153.000       81.000 ...       <- label (first index, width 6), values
             5:       12.000                           width 13, ``columns`` a row
        L:                                          <- an empty array: the letter alone
        \9/17 20% sucrose                           <- comments, after the variables

    With another ``newline`` (``"\n"`` or ``"\r"``) each block opens with two plain blank
    lines instead.

    Parameters
    ----------
    sessions
        The sessions, in file order. Header fields not in
        :data:`labpipe.model.HEADER_FIELDS` (such as ``"File"``) are not written; a
        header field absent from a session is left out.
    file_line
        Text of the ``File:`` line opening the file; ``None`` writes no such line.
    newline
        Line terminator: ``"\r\n"`` (MED-PC on Windows), ``"\n"`` or ``"\r"``.
    columns
        Values per array row (MED-PC's ``DISKCOLUMNS``), 1 or more.
    decimals
        Decimals of every value (``DISKFORMAT``); ``None`` writes integers without a
        decimal point, as some labs configure MED-PC to.
    encoding
        Codec of the bytes; MED-PC writes the Windows ANSI code page (cp1252).

    Returns
    -------
    bytes
        The file's content.

    Raises
    ------
    ValueError
        ``columns`` < 1, an unknown ``newline``, a non-integral value with
        ``decimals=None``, a non-finite value, or text the codec cannot encode.
    """
    if columns < 1:
        raise ValueError(f"columns must be at least 1, not {columns}")
    if newline not in ("\r\n", "\n", "\r"):
        raise ValueError(f"newline must be '\\r\\n', '\\n' or '\\r', not {newline!r}")
    if decimals is not None and decimals < 0:
        raise ValueError(f"decimals must be None or >= 0, not {decimals}")
    # MED-PC opens every block with a bare LF line and a CR CR LF line (CRLF files).
    lead = "\n\r\r\n" if newline == "\r\n" else newline * 2
    out: list[str] = []
    if file_line is not None:
        out.append(f"File: {file_line}{newline}")
    for session in sessions:
        lines: list[str] = [
            f"{name}: {session.header[name]}" for name in HEADER_FIELDS if name in session.header
        ]
        for letter, value in session.variables.items():
            if isinstance(value, np.ndarray):
                values = np.asarray(value, dtype=np.float64).ravel()
                if not np.all(np.isfinite(values)):
                    raise ValueError(f"array {letter} holds a value that is not finite")
                lines.append(f"{letter}:")
                # A leading blank keeps values apart even when one is wider than 12.
                cells = [" " + _fmt_number(v, decimals, 12) for v in values.tolist()]
                for start in range(0, len(cells), columns):
                    lines.append(f"{start:6d}:" + "".join(cells[start : start + columns]))
            else:
                number = float(value)
                if not np.isfinite(number):
                    raise ValueError(f"scalar {letter} is not finite")
                lines.append(f"{letter}:" + _fmt_number(number, decimals, 12))
        lines.extend("\\" + comment for comment in session.comments)
        out.append(lead)
        out.append(newline.join(lines) + newline)
    return "".join(out).encode(encoding)
