"""The reader's fast paths give exactly what its general paths give (no timing here)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from labpipe import medpc


def _general(monkeypatch: pytest.MonkeyPatch, data: bytes) -> object:
    with monkeypatch.context() as m:
        m.setattr(medpc, "_SMALL_ARRAY_CHARS", 0)
        m.setattr(medpc, "_SMALL_NEWLINE_BYTES", 0)
        m.setattr(medpc, "_VECTOR_ROWS", False)
        m.setattr(medpc, "_QUICK_HEADER", False)
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


HEADER_LINES = [
    "End Date: 03/02/26",
    "Experiment: Coc 0.5 mg/kg",
    "Group: ",
    "Group:",
    "Subject:M1",
    "MSN: SA FR1",
    "End Time:  9:29:07",
    "Box : 3",
    "Box: 4",
    "Start Time:\t9:00:00",
    "X1: y",
    "Foo Bar: x: y",
    "\\a comment",
    "",
    "   ",
    "é: 1",
    "Note:\tx\t",
]


@pytest.mark.parametrize("seed", range(60))
def test_plain_headers_read_in_one_pass_equal_the_line_by_line_reader(monkeypatch, seed):
    rng = random.Random(seed)
    head = ["Start Date: 03/02/26", "Subject: R1", "Box: 1", "Start Time: 9:00:00"]
    head += [rng.choice(HEADER_LINES) for _ in range(rng.randint(0, 4))]
    rng.shuffle(head)
    body = ["File: C:\\x", "", *head, "A: 1", "B:", "     0:      1.000"]
    nl = rng.choice(["\r\n", "\n"])
    data = (nl.join(body) + nl).encode()
    _same(_general(monkeypatch, data), _fast(data))


def test_line_end_styles_of_small_files_equal_the_numpy_classification(monkeypatch):
    rng = random.Random(7)
    for _ in range(20000):
        data = bytes(rng.choice(b"a\r\n\x01") for _ in range(rng.randint(0, 12)))
        with monkeypatch.context() as m:
            m.setattr(medpc, "_SMALL_NEWLINE_BYTES", 0)
            general = medpc._newline_style(data)
        assert medpc._newline_style(data) == general, data


def test_parse_work_is_linear_in_sessions_per_file(monkeypatch):
    # Counted, not timed: each block is searched for its variables once, and all arrays
    # of the file are converted in one bulk call.
    block = (
        "\n\r\r\nStart Date: 03/02/26\r\nSubject: R{i}\r\nBox: {i}\r\nStart Time: 9:00:00\r\n"
        "MSN: X\r\nA:       1.000\r\nL:\r\n     0:        1.000        2.000\r\n"
    )
    calls = {"_read_block": 0, "_vector_rows": 0}

    def counting(name):
        real = getattr(medpc, name)

        def count(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        return count

    monkeypatch.setattr(medpc, "_BATCH_MIN_CHARS", 0)
    for name in calls:
        monkeypatch.setattr(medpc, name, counting(name))
    for n in (1, 16, 256):
        calls.update(dict.fromkeys(calls, 0))
        parsed = medpc.parse_medpc("".join(block.format(i=i) for i in range(n)).encode())
        assert len(parsed.sessions) == n
        assert calls == {"_read_block": n, "_vector_rows": 1}


# ---- the numpy reader of array rows -------------------------------------------------

#: Values as MED-PC and hand-edited files write them: the bulk reader takes all of these.
COMMON = [
    "0.000",
    "-0.000",
    "165.160",
    "43035.000",
    "-12.5",
    "+3",
    ".5",
    "5.",
    "007",
    "11",
    "1.5E2",
    "3E2",
    "1e-3",
    "-2.5e+01",
    "4E0",
    "0.1",
    "0.30000",
    "9007199254740992",
    "90071992547409.92",
    "1e22",
    "2E-22",
]
#: Near misses it must leave to the general path (which reads them, or names them bad).
RARE = [
    "9007199254740993",
    "1234567890123456789",
    "1.7976931348623157e308",
    "1e-400",
    "1e23",
    "1.2.3",
    "1-2",
    "--1",
    "E5",
    "5E",
    "5E+",
    "1E1234",
    "-",
    ".",
    "x",
    "nan",
    "inf",
    "1_0",
    "١",
    "0x10",
    "1:2",
]


def _rows(rng: random.Random, n_values: int, columns: int, odd: float) -> list[str]:
    lines, count = [], 0
    while count < n_values:
        k = min(columns, n_values - count)
        pick = [rng.choice(RARE if rng.random() < odd else COMMON) for _ in range(k)]
        label = count + (rng.random() < odd)  # now and then a gap
        lines.append(f"{label:>6}:{rng.choice([' ', '    ', chr(9)])}{' '.join(pick)}")
        count += k
    return lines


@pytest.mark.parametrize("seed", range(40))
def test_bulk_array_reader_equals_the_general_reader(monkeypatch, seed):
    # Whole files, many blocks, with the bulk reader on and off: the same sessions, the
    # same problems, bit for bit.
    rng = random.Random(seed)
    odd = 0.0 if seed % 2 else 0.001  # every other file has no near miss at all
    body = []
    for i in range(rng.randint(1, 5)):
        body += [
            "",
            "Start Date: 03/02/26",
            f"Subject: R{i}",
            f"Box: {i}",
            "Start Time: 9:00:00",
            "MSN: FR1",
            "A:       1.000",
        ]
        for letter in "CDE":
            body.append(f"{letter}:")
            body += _rows(rng, rng.randint(0, 900), rng.choice([1, 5, 6, 8]), odd)
    data = ("\r\n".join(body) + "\r\n").encode()
    monkeypatch.setattr(medpc, "_BATCH_MIN_CHARS", rng.choice([0, 4096]))
    _same(_general(monkeypatch, data), _fast(data))


@given(
    st.lists(
        st.one_of(
            st.floats(allow_nan=False, allow_infinity=False).map(repr),
            st.tuples(st.floats(-1e7, 1e7), st.integers(0, 9)).map(lambda fd: f"{fd[0]:.{fd[1]}f}"),
            st.tuples(st.floats(-1e30, 1e30), st.integers(0, 12)).map(
                lambda fd: f"{fd[0]:.{fd[1]}E}"
            ),
            st.integers(-(10**18), 10**18).map(str),
            st.from_regex(r"[-+]?[0-9]{0,10}\.?[0-9]{0,10}([eE][-+]?[0-9]{1,3})?", fullmatch=True),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_bulk_array_reader_equals_float(tokens):
    # Each value the bulk reader accepts is exactly float(text): the same double, bit for
    # bit (decimal -> binary rounding is where a hand-rolled reader goes wrong).
    rows = [f"{i:>6}: {tok}" for i, tok in enumerate(tokens)]
    read = medpc._vector_rows(["\n".join(rows)], [0])
    if read is None:
        return
    expected = np.array([float(t) for t in tokens])
    assert read[0].tobytes() == expected.tobytes()
    # ... and a number as MED-PC writes one (what the general path accepts).
    assert all(medpc._NUMBER_RE.fullmatch(t) for t in tokens)


def test_bulk_array_reader_takes_the_formats_labs_write():
    # The fast path is not silently skipped for what real files hold (else it is dead).
    rows = [
        "     0:      165.160      215.910       -0.000",
        "     3:   11    2 1.5E2    3E2",
        "     7:\t.5 5. +3",
    ]
    read = medpc._vector_rows(["\n".join(rows)], [0])
    assert read is not None
    assert read[0].tolist() == [165.16, 215.91, -0.0, 11, 2, 150, 300, 0.5, 5, 3]
    assert np.signbit(read[0][2])
    # Continued arrays and several arrays at once.
    two = medpc._vector_rows(["     4:    1.000", "     0:    2.000\n     1:    3.000"], [4, 0])
    assert two is not None and [a.tolist() for a in two] == [[1.0], [2.0, 3.0]]
