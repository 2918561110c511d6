"""The reader's fast paths give exactly what its general paths give (no timing here)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labpipe import demo, medpc
from labpipe.model import ParsedFile, RawSession


def _general(monkeypatch: pytest.MonkeyPatch, data: bytes) -> object:
    with monkeypatch.context() as m:
        m.setattr(medpc, "_SMALL_ARRAY_CHARS", 0)
        m.setattr(medpc, "_SMALL_NEWLINE_BYTES", 0)
        m.setattr(medpc, "_VECTOR_ROWS", False)
        m.setattr(medpc, "_QUICK_HEADER", False)
        m.setattr(medpc, "_STANDARD", False)
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
    monkeypatch.setattr(medpc, "_STANDARD", False)  # the general reader's work is counted
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


# ---- the lean reader of standard files (_parse_standard) ---------------------------------

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "medpc"


def _outcome(data: bytes, *, standard: bool, limits: medpc.Limits = medpc.DEFAULT_LIMITS) -> object:
    """parse_medpc's result with the lean reader on or off (an error as its code and text)."""
    saved = medpc._STANDARD
    medpc._STANDARD = standard
    try:
        return medpc.parse_medpc(data, limits=limits)
    except medpc.MedPCFormatError as exc:
        return ("error", exc.reason_code, str(exc), exc.line)
    finally:
        medpc._STANDARD = saved


def _identical(a: object, b: object) -> None:
    """The same ParsedFile, field by field: header and variable order, value types, bits."""
    if isinstance(a, tuple) or isinstance(b, tuple):
        assert a == b
        return
    assert isinstance(a, ParsedFile) and isinstance(b, ParsedFile)
    assert (a.encoding, a.newline, a.problems) == (b.encoding, b.newline, b.problems)
    assert len(a.sessions) == len(b.sessions)
    for x, y in zip(a.sessions, b.sessions, strict=True):
        assert (x.block, x.line, x.comments) == (y.block, y.line, y.comments)
        assert list(x.header.items()) == list(y.header.items())
        assert list(x.variables) == list(y.variables)
        for k, vx in x.variables.items():
            vy = y.variables[k]
            assert type(vx) is type(vy), k
            if isinstance(vx, np.ndarray):
                assert vx.dtype == vy.dtype == np.float64 and vx.shape == vy.shape
                assert vx.tobytes() == vy.tobytes() and vx.flags.writeable
            else:
                assert np.float64(vx).tobytes() == np.float64(vy).tobytes()


def _same_both_ways(data: bytes, limits: medpc.Limits = medpc.DEFAULT_LIMITS) -> object:
    lean = _outcome(data, standard=True, limits=limits)
    _identical(lean, _outcome(data, standard=False, limits=limits))
    return lean


def _standard_file(blocks: int = 1, *, newline: str = "\r\n", decimals: int | None = 3) -> bytes:
    """A small file as MED-PC writes it: a few scalars and three short arrays a block."""
    sessions = [
        RawSession(
            header={
                "Start Date": "09/30/26",
                "End Date": "09/30/26",
                "Subject": f"K0023-R0{i + 1}",
                "Experiment": "Coc 0.5 mg/kg \u2013 NAC",
                "Group": "K0023-C1",
                "Box": str(25 + i),
                "Start Time": " 9:03:00",
                "End Time": "11:03:00",
                "MSN": "SA_FR1_2h",
            },
            variables={
                "A": 21.0,
                "B": 4.0 + i,
                "C": -14.5,
                "I": np.array([122.39, 180.79, 233.31, 266.33, 508.98, 1491.38, 0.0]),
                "L": np.array([122.39, 126.85, 141.26, 180.79, 189.26]),
                "R": np.array([1327.59, 1458.63, 0.0]),
            },
        )
        for i in range(blocks)
    ]
    if decimals is None:  # integers, as some labs have MED-PC write them
        sessions = [
            RawSession(
                header=s.header,
                variables={k: np.round(v) for k, v in s.variables.items()},
            )
            for s in sessions
        ]
    return medpc.format_medpc(
        sessions, file_line=r"C:\MED-PC IV\DATA\!2026-09-30", newline=newline, decimals=decimals
    )


def test_lean_reader_is_taken_for_standard_files(monkeypatch):
    # The fast path must not rot into a path that is never taken: a standard small file is
    # read without the general reader (which would fail here).
    def general(*args, **kwargs):
        raise AssertionError("the general reader was used")

    monkeypatch.setattr(medpc, "_read_block", general)
    for data in (
        _standard_file(),
        _standard_file(3),
        _standard_file(newline="\n"),
        _standard_file(newline="\r", decimals=None),
        _standard_file().replace(b"\r\n", b"\n"),
        _standard_file().replace("\u2013".encode("cp1252"), "\u2013".encode()),  # UTF-8
    ):
        parsed = medpc.parse_medpc(data)
        assert parsed.problems == () and parsed.sessions
    assert medpc._parse_standard(_standard_file(), medpc.DEFAULT_LIMITS) is not None


def test_lean_reader_equals_the_general_reader_on_standard_files():
    for blocks in (1, 2, 5):
        for newline in ("\r\n", "\n", "\r"):
            for decimals in (3, 5, None):
                data = _standard_file(blocks, newline=newline, decimals=decimals)
                parsed = _same_both_ways(data)
                assert isinstance(parsed, ParsedFile) and len(parsed.sessions) == blocks


@pytest.fixture(scope="module")
def lab_files(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """Generated lab files: the scaled lab's (standard) and the demo's (with defects)."""
    files = []
    for name, write in (
        ("scaled", lambda d: demo.write_scaled_lab(d, n_files=400, seed=3)),
        ("demo", demo.write_demo),
    ):
        lab = tmp_path_factory.mktemp(name)
        write(lab)
        files += [p.read_bytes() for p in sorted((lab / "data" / "raw").rglob("*")) if p.is_file()]
    return files


def test_lean_reader_equals_the_general_reader_on_generated_labs(lab_files):
    taken = 0
    for data in lab_files:
        _same_both_ways(data)
        taken += medpc._parse_standard(data, medpc.DEFAULT_LIMITS) is not None
    assert taken >= 0.9 * len(lab_files)  # the usual files do go the lean way


@pytest.mark.corpus
def test_lean_reader_equals_the_general_reader_on_the_corpus():
    if not CORPUS.is_dir():
        pytest.skip("../shared/corpus/medpc is absent")
    paths = sorted(p for p in CORPUS.glob("*/*") if p.is_file() and p.name != "SOURCES.md")
    assert paths
    taken = 0
    for path in paths:
        data = path.read_bytes()
        _same_both_ways(data)
        taken += medpc._parse_standard(data, medpc.DEFAULT_LIMITS) is not None
    assert taken >= 5  # the small real files (several labs) go the lean way too


#: Edits of a standard file, each a case the lean reader must read exactly as the general
#: reader does, or leave to it.
EDITS: list[tuple[bytes, bytes]] = [
    (b"      21.000", b"      1e3"),  # exponent numbers
    (b"      21.000", b"      1.5E+2"),
    (b"      21.000", b"    -21.000"),  # negative values
    (b"      21.000", b"    -0.000"),
    (b"      21.000", b"      1e999"),  # not finite
    (b"      21.000", b"      nan"),
    (b"      21.000", b"      inf"),
    (b"      21.000", b"      1_000"),
    (b"      21.000", b"      21.000 5"),
    (b"      21.000", b"      \xd9\xa1"),  # a digit of another script
    (b"      21.000", b"\t21.000\t"),  # tabs
    (b"      21.000", b""),  # A becomes an empty array
    (b"     5:", b"     6:"),  # a row label off by one
    (b"     5:", b"     4:"),
    (b"     5:", b"    05:"),
    (b"     5:", b"\t5:"),
    (b"     5:", b"     5:\r\n"),  # a row without values
    (b"     0:", b"\x0b    0:"),
    (b"     0:  ", b"     0:"),  # a label glued to its first value
    (b"  122.390", b"  122.39O"),
    (b"  122.390", b"  122.390:"),
    (b"  122.390", b"  122,390"),
    (b"  122.390", b"  1.2.3"),
    (b"  122.390", b"  --1"),
    (b"  122.390", b"  \xa0122.390"),
    (b"\r\nR:", b"\r\n\\a comment\r\nR:"),  # comments
    (b"\r\nR:", b"\r\nR:\r\n\\a comment"),
    (b"\r\nR:", b"\r\n\r\nR:"),  # a blank line among the variables
    (b"\r\nR:", b"\r\n   \r\nR:"),
    (b"\r\nR:", b"\r\nfoo bar\r\nR:"),
    (b"\r\nR:", b"\r\nI:"),  # a letter twice
    (b"\r\nR:", b"\r\nFile: x\r\nR:"),
    (b"\r\nR:", b"\r\nStart Date: 10/01/26\r\nR:"),
    (b"\r\nB:", b"\r\nb:"),
    (b"\r\nB:", b"\r\nB :"),
    (b"Box: ", b"Box:"),  # header fields
    (b"Box: ", b"Box : "),
    (b"Box: 25", b"Box: "),
    (b"\r\nBox: 25", b""),  # an identity field missing
    (b"\r\nGroup", b"\r\n\\c\r\nGroup"),
    (b"\r\nGroup", b"\r\n\r\nGroup"),
    (b"\r\nGroup", b"\r\nSubject: x\r\nGroup"),  # a name twice
    (b"\r\nGroup", b"\r\nFile: x\r\nGroup"),
    (b"\r\nGroup", b"\r\nfoo\r\nGroup"),
    (b"\r\nGroup", b"\r\n G"),
    (b"Group:", b"Group\t:"),
    (b"Group:", b"Gr\toup:"),
    (b"MSN: SA_FR1_2h", b"MSN: SA_FR1_2h \xa0"),
    (b"MSN: SA_FR1_2h", b"MSN: \xe2\x80\x93"),  # UTF-8 in the header
    (b"MSN: SA_FR1_2h", b"MSN: \x81"),  # not cp1252 either: latin-1
    (b"MSN: SA_FR1_2h", b"MSN: \x00"),
    (b"MSN: SA_FR1_2h", b"MSN: a\x1cb"),
    (b"File: C", b"File:C"),  # the File line
    (b"File: C", b"\r\nFile: C"),
    (b"File: C", b"File : C"),
    (b"File: C", b"\\x\r\nFile: C"),
    (b"File: C", b"File: y\r\nFile: C"),
    (b"File: C", b"Foo: C"),
    (b"\n\r\r\nStart", b"Start"),  # framing and line ends
    (b"\n\r\r\nStart", b"\r\n\r\nStart"),
    (b"\n\r\r\nStart", b"\n\nStart"),
    (b"\n\r\r\nStart", b"\r\rStart"),
    (b"\n\r\r\nStart", b"\n\r\r\n \t\r\nStart"),
    (b"Start Date:", b"Start Date :"),
    (b"Start Date:", b"Start Date\t:"),
    (b"Start Date:", b"Start date:"),
    (b"Start Date: 09/30/26", b"Start Date:"),
]


@pytest.mark.parametrize("old,new", EDITS)
@pytest.mark.parametrize("blocks", [1, 3])
def test_lean_reader_on_edited_files(old, new, blocks):
    base = _standard_file(blocks)
    assert old in base
    for count in (1, -1):  # the first occurrence, then every one
        data = base.replace(old, new, count)
        _same_both_ways(data)
        for newline in (b"\n", b"\r"):
            _same_both_ways(data.replace(b"\r\n", newline))


@pytest.mark.parametrize("blocks", [1, 2, 4])
def test_lean_reader_on_cut_and_padded_files(blocks):
    base = _standard_file(blocks)
    for end in range(len(base) - 200, len(base) + 1):  # cut anywhere near the end
        _same_both_ways(base[:end])
        _same_both_ways(base[:end] + b"\x00" * 7)
    for tail in (b"\r\n", b"\r\n\r\n", b"   \r\n", b"\t", b"\r", b"\n\r\r\nStart Da", b"\\c"):
        _same_both_ways(base + tail)
    # A last block shorter than an earlier block of the same MSN: cut at a line end.
    lines = base.split(b"\r\n")
    for n in range(len(lines) - 12, len(lines)):
        _same_both_ways(b"\r\n".join(lines[:n]) + b"\r\n")


def test_lean_reader_respects_the_limits():
    data = _standard_file(3)
    for limits in (
        medpc.Limits(max_blocks=2),
        medpc.Limits(max_blocks=3),
        medpc.Limits(max_array_values=4),
        medpc.Limits(max_line_chars=60),
        medpc.Limits(max_file_bytes=len(data) - 1),
        medpc.Limits(max_file_bytes=len(data)),
    ):
        _same_both_ways(data, limits)


_EDIT_BYTES = b"\r\n \t:.-+eE019AZ\\_\x00\x0b\x1c\xa0\xe9\x96"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    blocks=st.sampled_from([1, 2]),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["insert", "delete", "replace"]),
            st.floats(0, 1, exclude_max=True),
            st.sampled_from(list(_EDIT_BYTES)),
        ),
        min_size=1,
        max_size=3,
    ),
    newline=st.sampled_from([b"\r\n", b"\n", b"\r"]),
)
def test_lean_reader_on_mutated_files(blocks, edits, newline):
    data = bytearray(_standard_file(blocks).replace(b"\r\n", newline))
    for kind, where, byte in edits:
        at = int(where * len(data))
        if kind == "insert":
            data[at:at] = bytes([byte])
        elif kind == "delete":
            del data[at]
        else:
            data[at] = byte
    _same_both_ways(bytes(data))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40).map(lambda b: b.translate(bytes.maketrans(b"\x00ab", b"\r\n\r"))))
def test_lean_line_ends_equal_the_general_ones(data):
    # The lean reader's line ends: the text _parse normalises to, and _newline_style.
    lines, newline = medpc._standard_lines(data)
    text, _ = medpc._decode(data)
    assert lines.decode("latin-1") == data.decode("latin-1").replace("\r\n", "\n").replace(
        "\r", "\n"
    )
    assert newline == medpc._newline_style(data)
    assert len(text) >= 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=24))
def test_lean_decoding_equals_the_general_one(data):
    assert medpc._standard_decode(data) == medpc._decode(data)


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 8, 64])
def test_the_long_line_pre_check_never_misses_a_line_over_the_limit(limit):
    # _check_bytes measures every line only when this pre-check says one may be too long:
    # it must say so whenever the longest line (between CR/LF bytes) is over the limit.
    rng = random.Random(limit)
    for _ in range(3000):
        data = bytes(rng.choice(b"aaaaaa\r\n") for _ in range(rng.randint(0, 5 * limit + 5)))
        longest = max(map(len, data.replace(b"\r", b"\n").split(b"\n")))
        if longest > limit:
            assert medpc._maybe_long_line(data, limit), (data, limit)
    assert not medpc._maybe_long_line(b"ab\n" * 100, 64)  # (then nothing is measured)
