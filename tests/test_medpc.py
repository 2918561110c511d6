"""Tests of the MED-PC reader and writer (labpipe.medpc)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from labpipe.errors import MedPCFormatError
from labpipe.medpc import (
    DEFAULT_LIMITS,
    Limits,
    describe,
    format_medpc,
    inspect_problems,
    inspect_records,
    parse_medpc,
    read_medpc,
)
from labpipe.model import ParsedFile, RawSession, Reason

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "medpc"


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


# ---------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------


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


def test_format_medpc_wide_labels_and_values_stay_apart() -> None:
    values = np.zeros(100_001)
    values[-1] = 123456789012.5
    session = RawSession(header=_HEADER, variables={"E": values})
    data = format_medpc([session])
    assert b"100000: 123456789012.500\r\n" in data
    assert np.array_equal(parse_medpc(data).sessions[0].variables["E"], values)


# ---------------------------------------------------------------------------------------
# Reader: well-formed input
# ---------------------------------------------------------------------------------------

_HEADER = {
    "Start Date": "03/14/26",
    "End Date": "03/14/26",
    "Subject": "R7",
    "Experiment": "coc",
    "Group": "1",
    "Box": "5",
    "Start Time": "9:02:11",
    "End Time": "11:02:11",
    "MSN": "SA_FR1 (cue) & more",
}


def _file(*bodies: str, newline: str = "\r\n", file_line: bool = True) -> bytes:
    """Build a MED-PC file from block bodies (each the lines after the header)."""
    lead = "\n\r\r\n" if newline == "\r\n" else newline * 2
    out = "File: C:\\MED-PC IV\\DATA\\test" + newline if file_line else ""
    for i, body in enumerate(bodies):
        head = dict(_HEADER, Box=str(i + 1), Subject=f"R{i + 1}")
        lines = "".join(f"{k}: {v}\r\n" for k, v in head.items()) + body
        out += lead + lines.replace("\r\n", newline)
    return out.encode("cp1252")


_BODY = (
    "A:      12.000\r\nB:      -3.500\r\n"
    "E:\r\n     0:        1.000        2.000        3.000        4.000        5.000\r\n"
    "     5:        6.000        0.000\r\n"
    "L:\r\n"
)


def test_parse_round_values_and_header() -> None:
    parsed = parse_medpc(_file(_BODY, _BODY))
    assert isinstance(parsed, ParsedFile)
    assert len(parsed.sessions) == 2 and parsed.problems == ()
    s = parsed.sessions[1]
    assert s.block == 1
    assert s.header["File"] == "C:\\MED-PC IV\\DATA\\test"
    assert list(s.header)[0] == "File"
    assert s.header["MSN"] == "SA_FR1 (cue) & more"
    assert s.subject == "R2"
    assert s.variables["A"] == 12.0 and isinstance(s.variables["A"], float)
    assert s.variables["B"] == -3.5
    e = s.variables["E"]
    assert isinstance(e, np.ndarray) and e.dtype == np.float64
    assert e.tolist() == [1, 2, 3, 4, 5, 6, 0]
    assert s.variables["L"].shape == (0,)
    assert parsed.encoding == "utf-8" and parsed.newline == "CRLF"


@pytest.mark.parametrize(("newline", "name"), [("\r\n", "CRLF"), ("\n", "LF"), ("\r", "CR")])
def test_line_endings_give_the_same_sessions(newline: str, name: str) -> None:
    ref = parse_medpc(_file(_BODY, _BODY))
    parsed = parse_medpc(_file(_BODY, _BODY, newline=newline))
    assert parsed.newline == name
    strip = [dict(r, line=0) for r in inspect_records(parsed)]
    assert strip == [dict(r, line=0) for r in inspect_records(ref)]
    # The CR CR LF framing line counts as two lines; plain framing is two blank lines.
    assert [s.line for s in parsed.sessions] == ([5, 23] if newline == "\r\n" else [4, 21])


def test_mixed_line_ends() -> None:
    data = _file(_BODY).replace(b"B:      -3.500\r\n", b"B:      -3.500\n")
    parsed = parse_medpc(data)
    assert parsed.newline == "mixed"
    assert parsed.sessions[0].variables["B"] == -3.5


def test_bom_and_cp1252_and_latin1() -> None:
    ref = inspect_records(parse_medpc(_file(_BODY)))
    bom = parse_medpc(b"\xef\xbb\xbf" + _file(_BODY, file_line=False))
    assert bom.encoding == "utf-8" and len(bom.sessions) == 1
    assert bom.sessions[0].header["Start Date"] == "03/14/26"
    cp = parse_medpc(_file(_BODY).replace(b"Subject: R1", b"Subject: R1 \x96 J\xfcrgen"))
    assert cp.encoding == "cp1252"
    assert cp.sessions[0].subject == "R1 \u2013 J\u00fcrgen"
    lat = parse_medpc(_file(_BODY).replace(b"coc", b"c\x81c"))
    assert lat.encoding == "latin-1"
    assert lat.sessions[0].variables.keys() == ref[0]["variables"].keys()


def test_splitlines_characters_are_not_line_ends() -> None:
    data = _file(_BODY).replace(b"Experiment: coc", "Experiment: a\x1cb\x85c".encode())
    parsed = parse_medpc(data)
    assert parsed.sessions[0].header["Experiment"] == "a\x1cb\x85c"


def test_header_quirks() -> None:
    data = (
        _file(_BODY)
        .replace(b"Subject: R1", b"Subject:OO M1.2")
        .replace(b"Start Time: 9:02:11", b"Start Time:  3:38:54")
        .replace(b"Group: 1", b"Group: ")
        .replace(b"End Date: 03/14/26", b"End Date: 03/14/2026")
    )
    h = parse_medpc(data).sessions[0].header
    assert h["Subject"] == "OO M1.2"
    assert h["Start Time"] == "3:38:54"
    assert h["Group"] == ""
    assert h["End Date"] == "03/14/2026"


def test_missing_optional_header_field_is_absent() -> None:
    data = _file(_BODY).replace(b"Group: 1\r\n", b"")
    assert "Group" not in parse_medpc(data).sessions[0].header


def test_rows_integer_format_exponent_tabs_one_to_eight_columns() -> None:
    body = (
        "A:\r\n     0:   11    2 1.5E2  3E2   -4\t\t\r\n     5:    0\r\n"
        "C:\r\n     0:        7.000\r\n     1:        8.000\r\n"
        "D:\r\n" + "     0:" + "        1.000" * 8 + "\r\n     8:        2.000\r\n"
    )
    s = parse_medpc(_file(body)).sessions[0]
    assert s.variables["A"].tolist() == [11, 2, 150, 300, -4, 0]
    assert s.variables["C"].tolist() == [7, 8]
    assert s.variables["D"].tolist() == [1] * 8 + [2]


def test_comments_are_kept() -> None:
    parsed = parse_medpc(_file(_BODY + "\\9/17 20% sucrose\r\n\\second\r\n", _BODY))
    assert parsed.sessions[0].comments == ("9/17 20% sucrose", "second")
    assert parsed.sessions[1].comments == ()


def test_big_array_is_exact() -> None:
    rng = np.random.default_rng(3)
    values = np.round(rng.normal(0, 5000, 100_001), 3)
    values[-50:] = 0.0
    session = RawSession(header=_HEADER, variables={"E": values, "A": 1.0})
    parsed = parse_medpc(format_medpc([session, session], file_line="x"))
    for s in parsed.sessions:
        assert np.array_equal(s.variables["E"], values)
        assert len(s.variables["E"]) == 100_001


def test_inspect_records_json_round_trip_and_describe() -> None:
    parsed = parse_medpc(_file(_BODY, _BODY + "\\note\r\n"))
    records = json.loads(json.dumps(inspect_records(parsed)))
    assert len(records) == 2
    assert records[0]["header"]["Box"] == "1"
    assert records[0]["variables"]["E"] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0]
    assert records[0]["variables"]["B"] == -3.5
    assert records[1]["comments"] == ["note"]
    text = describe(parsed, "box.txt")
    assert "box.txt: 2 session(s)" in text
    assert "array E: 7 values" in text and "B=-3.5" in text


def test_read_medpc_refuses_big_file_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(_file(_BODY))
    assert len(read_medpc(path).sessions) == 1
    with pytest.raises(MedPCFormatError) as info:
        read_medpc(path, limits=Limits(max_file_bytes=100))
    assert info.value.reason_code == "TOO_LARGE"
    assert info.value.path == str(path)


def test_default_limits() -> None:
    assert Limits(64 * 2**20, 64 * 2**10, 2_000_000, 4096) == DEFAULT_LIMITS


# ---------------------------------------------------------------------------------------
# Reader: bad input
# ---------------------------------------------------------------------------------------


def _refused(data: bytes, reason: str, *words: str) -> MedPCFormatError:
    with pytest.raises(MedPCFormatError) as info:
        parse_medpc(data, source="raw/box.txt")
    err = info.value
    assert err.reason_code == reason
    assert err.path == "raw/box.txt"
    assert "raw/box.txt" in str(err)
    for word in words:
        assert word in str(err)
    return err


def test_empty_and_whitespace() -> None:
    _refused(b"", "EMPTY_FILE", "empty")
    _refused(b"  \r\n\r\n\t \n", "EMPTY_FILE", "blanks")
    _refused(b"\x00" * 4096, "EMPTY_FILE", "NUL")


def test_not_medpc() -> None:
    _refused(b"subject,box,presses\r\nR1,1,12\r\nR2,2,30\r\n", "NOT_MEDPC", "Start Date")
    _refused(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "NOT_MEDPC")


def test_utf16_refused() -> None:
    text = _file(_BODY).decode("cp1252")
    for data in (text.encode("utf-16"), text.encode("utf-16-le")):
        err = _refused(data, "UNREADABLE_ENCODING", "Unicode", "ANSI")
        assert err.hint


def test_stripped_header_refused() -> None:
    _refused(_BODY.encode(), "BAD_HEADER", "no Start Date/Subject/Box header")


def test_only_block_without_identity() -> None:
    data = _file(_BODY).replace(b"Box: 1\r\n", b"")
    _refused(data, "BAD_HEADER", "Box", "cannot tell which session")


def test_block_without_identity_among_others() -> None:
    data = _file(_BODY, _BODY).replace(b"Subject: R1\r\n", b"")
    parsed = parse_medpc(data)
    assert [s.subject for s in parsed.sessions] == ["R2"]
    (problem,) = parsed.problems
    assert problem.reason is Reason.BAD_HEADER and problem.block == 0
    assert "Subject" in problem.message and "box 1" in problem.message


def test_label_jump_is_a_block_problem() -> None:
    bad = _BODY.replace("     5:        6.000", "     6:        6.000")
    parsed = parse_medpc(_file(_BODY, bad, _BODY), source="f.txt")
    assert [s.subject for s in parsed.sessions] == ["R1", "R3"]
    (problem,) = parsed.problems
    assert problem.reason is Reason.BAD_VALUE and problem.block == 1
    lines = _file(_BODY, bad, _BODY).decode().replace("\r\n", "\n").replace("\r", "\n")
    expected = [n for n, x in enumerate(lines.split("\n"), 1) if x.startswith("     6:")][0]
    assert problem.line == expected
    assert f"line {expected}" in problem.message
    assert "box 2 (subject R2)" in problem.message and "array E" in problem.message
    assert problem.header["Subject"] == "R2"


def test_non_numeric_value() -> None:
    bad = _BODY.replace("3.000", "3,000")
    parsed = parse_medpc(_file(_BODY, bad))
    (problem,) = parsed.problems
    assert problem.reason is Reason.BAD_VALUE
    assert "'3,000'" in problem.message and "array E" in problem.message
    bad = _BODY.replace("-3.500", "n/a")
    (problem,) = parse_medpc(_file(bad, _BODY)).problems
    assert "'n/a'" in problem.message and "value of B" in problem.message
    (problem,) = parse_medpc(_file(_BODY.replace("-3.500", "1e999"), _BODY)).problems
    assert "'1e999'" in problem.message
    (problem,) = parse_medpc(_file(_BODY.replace("4.000", "nan  "), _BODY)).problems
    assert "'nan'" in problem.message


def test_nul_bytes_inside_a_block() -> None:
    bad = _BODY.replace("3.000", "3\x00000")
    parsed = parse_medpc(_file(_BODY, bad))
    assert len(parsed.sessions) == 1
    assert "NUL" in parsed.problems[0].message


def test_too_long_line() -> None:
    data = _file(_BODY) + b"     7:" + b"1" * 70_000 + b"\r\n"
    _refused(data, "TOO_LARGE", "line 2", "characters long")


def test_huge_label_and_100mb_digits_cost_nothing() -> None:
    body = "E:\r\n999999999:        1.000\r\n"
    parsed = parse_medpc(_file(_BODY, body, _BODY))
    assert parsed.problems[0].reason is Reason.BAD_VALUE
    assert "999999999:" in parsed.problems[0].message
    _refused(b"1" * (DEFAULT_LIMITS.max_file_bytes + 1), "TOO_LARGE")


def test_caps_on_values_and_blocks() -> None:
    limits = Limits(max_array_values=6)
    parsed = parse_medpc(_file(_BODY, _BODY.replace("E:", "F:", 1)), limits=limits)
    assert {p.reason for p in parsed.problems} == {Reason.TOO_LARGE}
    with pytest.raises(MedPCFormatError) as info:
        parse_medpc(_file(_BODY, _BODY, _BODY), limits=Limits(max_blocks=2))
    assert info.value.reason_code == "TOO_LARGE"


# ---------------------------------------------------------------------------------------
# Truncation
# ---------------------------------------------------------------------------------------


def test_truncated_mid_row_without_final_newline() -> None:
    data = _file(_BODY, _BODY)
    cut = data[: data.rindex(b"2.000") + 4]
    parsed = parse_medpc(cut, source="f.txt")
    assert [s.subject for s in parsed.sessions] == ["R1"]
    (problem,) = parsed.problems
    assert problem.reason is Reason.TRUNCATED_BLOCK and problem.block == 1
    assert "box 2 (subject R2)" in problem.message
    assert "middle of array E (row 0:)" in problem.message
    assert "shut down" in problem.message


def test_trailing_nul_padding_is_a_cut() -> None:
    parsed = parse_medpc(_file(_BODY, _BODY) + b"\x00" * 512)
    assert len(parsed.sessions) == 1
    assert parsed.problems[0].reason is Reason.TRUNCATED_BLOCK


def test_cut_at_every_offset_of_last_block() -> None:
    body = _BODY.replace("L:\r\n", "L:\r\n     0:        9.000\r\n")
    data = _file(body, body)
    first = parse_medpc(_file(body)).sessions[0]
    start = data.rindex(b"Start Date")
    whole = parse_medpc(data)
    assert len(whole.sessions) == 2 and whole.problems == ()
    for end in range(start + 1, len(data) - 1):
        cut = data[:end]
        try:
            parsed = parse_medpc(cut)
        except MedPCFormatError as exc:  # pragma: no cover - the first block is whole
            pytest.fail(f"cut at {end}: {exc}")
        assert len(parsed.sessions) == 1, (end, cut[-30:])
        assert (
            inspect_records(parsed)[0]["variables"]
            == inspect_records(ParsedFile((first,)))[0]["variables"]
        )
        (problem,) = parsed.problems
        assert problem.reason is Reason.TRUNCATED_BLOCK, (end, cut[-30:], problem)


def test_single_truncated_block_is_a_file_error() -> None:
    data = _file(_BODY)
    _refused(data[:-8], "TRUNCATED_BLOCK", "cut off")


def test_comment_without_final_newline_is_not_a_cut() -> None:
    parsed = parse_medpc(_file(_BODY + "\\water volume"))
    assert parsed.problems == () and parsed.sessions[0].comments == ("water volume",)


# ---------------------------------------------------------------------------------------
# The real corpus (../shared/corpus/medpc; not copied here: some files are GPL)
# ---------------------------------------------------------------------------------------


def _corpus(relative: str) -> ParsedFile:
    path = CORPUS / relative
    if not path.exists():
        pytest.skip(f"corpus file {relative} absent")
    return read_medpc(path)


def _corpus_files() -> list[str]:
    if not CORPUS.is_dir():
        return []
    return sorted(str(p.relative_to(CORPUS)) for p in CORPUS.glob("*/*") if p.is_file())


@pytest.mark.corpus
def test_corpus_present() -> None:
    if not CORPUS.is_dir():
        pytest.skip("../shared/corpus/medpc is absent")
    assert len(_corpus_files()) == 21


@pytest.mark.corpus
@pytest.mark.parametrize("relative", _corpus_files() or ["<absent>"])
def test_corpus_file_parses(relative: str) -> None:
    parsed = _corpus(relative)
    assert parsed.sessions
    for s in parsed.sessions:
        assert {"Start Date", "Start Time", "Subject", "Box", "MSN", "File"} <= set(s.header)
        assert s.variables
        for value in s.variables.values():
            assert isinstance(value, float) or (
                isinstance(value, np.ndarray) and value.dtype == np.float64 and value.ndim == 1
            )
    json.dumps(inspect_records(parsed))
    assert describe(parsed, relative)
    if relative.startswith("cyf203"):
        assert len(parsed.problems) == 1
    else:
        assert parsed.problems == ()


@pytest.mark.corpus
def test_corpus_sf1() -> None:
    parsed = _corpus("3c-lab__operant-data-pipeline/SF1_MedPC_example_txt")
    assert len(parsed.sessions) == 12
    assert [s.subject for s in parsed.sessions] == [f"M{n}" for n in range(2169, 2181)]
    s = parsed.sessions[0]
    assert s.variables["B"] == 44.0
    assert s.header["File"] == "D:\\computer_E\\MTF134EC21HSOXYLGA04"
    assert (s.header["Start Date"], s.header["End Date"]) == ("11/02/23", "11/03/23")
    assert s.header["End Time"] == "03:38:59" and s.msn == "OXYGWAS 12h"
    lengths = {k: len(v) for k, v in s.variables.items() if isinstance(v, np.ndarray)}
    assert lengths == {"H": 4, "L": 145, "R": 145, "W": 145, "U": 2001, "Y": 2001, "V": 201}
    assert sum(not isinstance(v, np.ndarray) for v in s.variables.values()) == 19
    assert s.variables["H"].tolist() == [43035.0, 0.0, 43035.0, 0.0]
    assert parsed.newline == "CRLF" and parsed.encoding == "utf-8"
    assert s.line == 5  # File, LF, CR, CRLF: the CR CR LF line counts as two


@pytest.mark.corpus
def test_corpus_palmer_integer_rows() -> None:
    parsed = _corpus("Palmer-Lab-UCSD__pmedpc/test")
    assert len(parsed.sessions) == 16
    s = parsed.sessions[0]
    assert s.subject == "F0301" and s.header["Group"] == ""
    assert all(isinstance(v, np.ndarray) for v in s.variables.values())
    assert s.variables["A"][:5].tolist() == [11, 2, 0, 0, 0]
    assert s.variables["M"][:3].tolist() == [3, 150, 300]  # `1.5E2  3E2`
    assert len(s.variables["U"]) == len(s.variables["Y"]) == 1001


@pytest.mark.corpus
def test_corpus_laubach_comment_and_event_array() -> None:
    s = _corpus("LaubachLab__MedParse/ExampleFile1").sessions[0]
    assert s.comments == ("9/17 20% sucrose",)
    assert len(s.variables["A"]) == 9501
    assert s.variables["A"][0] == 2500.036
    assert s.variables["Y"] == 2036.0
    assert s.msn == "Switch30-l(8-2)"
    assert _corpus("LaubachLab__MedParse/ExampleFile2").sessions[0].comments == ("water volume",)


@pytest.mark.corpus
def test_corpus_subject_with_space_six_columns() -> None:
    s = _corpus("oortelli__MedParser/!_Subject_OO M1_Experiment_HC.Group_1").sessions[0]
    assert s.subject == "OO M1" and s.msn == "Plus Maze"
    assert s.header["Start Time"] == "9:29:07"
    assert s.variables["J"] == 99.23
    assert s.variables["L"][:8].tolist() == [0.0, 5.3, 0.0, 75.32, 38.96, 0.0, 13.0, 104.07]


@pytest.mark.corpus
def test_corpus_one_value_per_row() -> None:
    s = _corpus("oortelli__MedParser/!_Subject_M9_Experiment_50.Group_18").sessions[0]
    assert s.variables["B"].tolist() == [3.0, 21.0, 8.0, 1671.0, 0.0]
    assert len(s.variables["C"]) == 1701
    s = _corpus("JuodaanViinaa__MedPCPy/R1_FETCH_1").sessions[0]
    assert len(s.variables["M"]) == 10_000
    s = _corpus("JuodaanViinaa__MedPCPy/S28_TOTAL_COUNT_1").sessions[0]
    assert s.msn == "Programa Conjuntivo TF15 & RF10 AR"
    assert len(s.variables["F"]) == 3506


@pytest.mark.corpus
def test_corpus_negative_values() -> None:
    s = _corpus("jessjorge__Lab.Data.Prep/!2020-03-12_08h48m.SubjectEB11.txt").sessions[0]
    assert s.variables["B"][14] == -1.0
    assert s.header["Start Time"] == "8:48:33"


@pytest.mark.corpus
def test_corpus_empty_array_and_lf_file() -> None:
    s = _corpus("zickvic__YEAB/M331_BL_S02.txt").sessions[0]
    assert s.variables["L"].shape == (0,)
    assert s.variables["C"][0] == 0.12
    parsed = _corpus("zickvic__YEAB/M333_DPY_S01.txt")
    assert parsed.newline == "LF"
    assert parsed.sessions[0].header["Box"] == "10"


@pytest.mark.corpus
def test_corpus_truncated_cyf203() -> None:
    parsed = _corpus("cyf203__medpc2excel/data")
    assert [s.subject for s in parsed.sessions] == ["56", "58", "57", "55", "59", "60", "61", "62"]
    (problem,) = parsed.problems
    assert problem.reason is Reason.TRUNCATED_BLOCK and problem.block == 8
    # grep counts 1971 lines; each of the 9 CR CR LF framing lines counts as two here.
    assert problem.line == 1971 + 9
    assert "line 1980" in problem.message
    assert "box 9 (subject 63)" in problem.message and "array Q (row 5:)" in problem.message
    assert inspect_problems(parsed)[0]["reason"] == "TRUNCATED_BLOCK"
