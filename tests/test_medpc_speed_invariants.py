"""The reader's fast paths give exactly what its general paths give (no timing here)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from labpipe import medpc


def _general(monkeypatch: pytest.MonkeyPatch, data: bytes) -> object:
    with monkeypatch.context() as m:
        m.setattr(medpc, "_SMALL_ARRAY_CHARS", 0)
        m.setattr(medpc, "_SMALL_NEWLINE_BYTES", 0)
        try:
            return medpc.parse_medpc(data)
        except medpc.MedPCFormatError as exc:
            return ("error", exc.reason_code, str(exc))


def _fast(data: bytes) -> object:
    try:
        return medpc.parse_medpc(data)
    except medpc.MedPCFormatError as exc:
        return ("error", exc.reason_code, str(exc))


def _same(a: object, b: object) -> None:
    if isinstance(a, tuple) or isinstance(b, tuple):
        assert a == b
        return
    assert a.newline == b.newline and a.encoding == b.encoding
    assert a.problems == b.problems
    assert len(a.sessions) == len(b.sessions)
    for x, y in zip(a.sessions, b.sessions, strict=True):
        assert x.header == y.header and x.comments == y.comments
        assert list(x.variables) == list(y.variables)
        for k in x.variables:
            vx, vy = np.asarray(x.variables[k]), np.asarray(y.variables[k])
            assert vx.dtype == vy.dtype and vx.tobytes() == vy.tobytes()


ROWS = [
    "     0:      165.160      215.910",
    "     2:        0.000       -0.000",
    "     0:   11    2    0",
    "     3:    1.5E2  +3  .5  5.",
    "     4:    x",
    "     4:",
    "     9:    1.0",
    "  0:1 2",
    "\t5: 7",
    "     0: nan",
    "     0: 1_0",
    "   ",
    "     0:      1.000:",
    "     1:      ١",
]


@pytest.mark.parametrize("seed", range(60))
def test_short_arrays_read_row_by_row_equal_the_bulk_reader(monkeypatch, seed):
    rng = random.Random(seed)
    body = ["Start Date: 03/02/26", "Subject: R1", "Box: 1", "Start Time: 9:00:00", "A: 1"]
    for letter in "BCD":
        body.append(f"{letter}:")
        body.extend(rng.choice(ROWS) for _ in range(rng.randint(0, 4)))
    nl = rng.choice(["\r\n", "\n", "\r"])
    data = ("\n\r\r\n" if rng.random() < 0.5 else "") + nl.join(body) + nl
    _same(_general(monkeypatch, data.encode()), _fast(data.encode()))


def test_line_end_styles_of_small_files_equal_the_numpy_classification(monkeypatch):
    rng = random.Random(7)
    for _ in range(20000):
        data = bytes(rng.choice(b"a\r\n\x01") for _ in range(rng.randint(0, 12)))
        with monkeypatch.context() as m:
            m.setattr(medpc, "_SMALL_NEWLINE_BYTES", 0)
            general = medpc._newline_style(data)
        assert medpc._newline_style(data) == general, data


def test_parse_work_is_linear_in_sessions_per_file(monkeypatch):
    # Counted, not timed: each block is searched for its variables once.
    block = (
        "\n\r\r\nStart Date: 03/02/26\r\nSubject: R{i}\r\nBox: {i}\r\nStart Time: 9:00:00\r\n"
        "MSN: X\r\nA:       1.000\r\nL:\r\n     0:        1.000        2.000\r\n"
    )
    calls = {"n": 0}
    real = medpc._parse_block

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(medpc, "_parse_block", counting)
    for n in (1, 16, 256):
        calls["n"] = 0
        parsed = medpc.parse_medpc("".join(block.format(i=i) for i in range(n)).encode())
        assert len(parsed.sessions) == n and calls["n"] == n
