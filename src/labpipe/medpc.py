"""Read and write MED-PC IV/V data files (raw bytes <-> :class:`labpipe.model.RawSession`).

(The full format description is written with the reader; see below.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from labpipe.model import HEADER_FIELDS, RawSession

__all__ = ["format_medpc"]


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
