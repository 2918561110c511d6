"""Tests of the MED-PC reader and writer (labpipe.medpc)."""

from __future__ import annotations

import numpy as np
import pytest

from labpipe.medpc import format_medpc
from labpipe.model import RawSession


def _session() -> RawSession:
    return RawSession(
        header={"Start Date": "11/02/23", "Subject": "OO M1", "Box": "1", "MSN": "SA 1"},
        variables={
            "B": 1513.0,
            "C": np.array([153.0, 81.0, -2.5, 0.0, 0.0, 7.0]),
            "L": np.empty(0),
        },
        comments=("9/17 20% sucrose",),
    )


def test_format_medpc_layout() -> None:
    data = format_medpc([_session()], file_line=r"C:\MED-PC IV\DATA\x")
    assert data == (
        b"File: C:\\MED-PC IV\\DATA\\x\r\n\n\r\r\n"
        b"Start Date: 11/02/23\r\nSubject: OO M1\r\nBox: 1\r\nMSN: SA 1\r\n"
        b"B:    1513.000\r\nC:\r\n"
        b"     0:      153.000       81.000       -2.500        0.000        0.000\r\n"
        b"     5:        7.000\r\nL:\r\n\\9/17 20% sucrose\r\n"
    )


def test_format_medpc_integers_lf_columns() -> None:
    session = RawSession(header={"Box": "2"}, variables={"B": 1513.0, "C": np.array([1.0, -2, 3])})
    data = format_medpc([session], newline="\n", columns=2, decimals=None)
    assert (
        data == b"\n\nBox: 2\nB:        1513\nC:\n"
        b"     0:            1           -2\n     2:            3\n"
    )


def test_format_medpc_refuses_fractions_as_integers() -> None:
    with pytest.raises(ValueError, match="not an integer"):
        format_medpc([_session()], decimals=None)
