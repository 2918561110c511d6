"""Property tests of labpipe.medpc: writer -> reader round trip, and parser fuzzing.

Profiles: ``ci`` (the default: 500 fuzz examples) and ``extended`` (10 000), chosen with
``HYPOTHESIS_PROFILE=extended``. They apply to the tests of this module only.
"""

from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labpipe.errors import MedPCFormatError
from labpipe.medpc import Limits, format_medpc, parse_medpc
from labpipe.model import HEADER_FIELDS, ParsedFile, RawSession

settings.register_profile(
    "ci", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "extended", max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
#: The round trip builds whole files: a fifth of the fuzz budget is plenty.
ROUND_TRIP = settings(PROFILE, max_examples=max(50, PROFILE.max_examples // 5))

# ---------------------------------------------------------------------------------------
# Round trip
# ---------------------------------------------------------------------------------------

_TEXT = (
    st.text(alphabet=st.sampled_from("ABCRMxyz0123456789 ._-&()/"), min_size=1, max_size=16)
    .map(str.strip)
    .filter(bool)
)


@st.composite
def _values(draw: st.DrawFn, decimals: int | None, size: int) -> list[float]:
    """Values exactly representable at ``decimals`` (integers when None)."""
    scale = 1 if decimals is None else 10**decimals
    bound = 10**9
    ints = draw(
        st.lists(
            st.one_of(st.just(0), st.integers(-bound, bound), st.integers(-50, 50)),
            min_size=size,
            max_size=size,
        )
    )
    return [k / scale for k in ints]


@st.composite
def _session(draw: st.DrawFn, decimals: int | None, index: int) -> RawSession:
    header = {
        "Start Date": draw(st.sampled_from(["03/14/26", "3/4/2026", "12/31/99"])),
        "Subject": draw(_TEXT),
        "Box": str(draw(st.integers(1, 64))),
        "Start Time": draw(st.sampled_from(["9:02:11", " 9:02:11", "23:59:59"])).strip(),
    }
    for name in ("End Date", "Experiment", "Group", "End Time"):
        if draw(st.booleans()):
            header[name] = draw(st.one_of(st.just(""), _TEXT))
    # A distinct MSN a block: a last block that stops short of an earlier block of the same
    # MSN is taken for a cut one, by design.
    header["MSN"] = f"{draw(_TEXT)} #{index}"
    header = {k: header[k] for k in HEADER_FIELDS if k in header}
    letters = draw(
        st.lists(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), min_size=1, max_size=6, unique=True)
    )
    variables: dict[str, float | np.ndarray] = {}
    for letter in letters:
        if draw(st.booleans()):
            variables[letter] = draw(_values(decimals, 1))[0]
        else:
            size = draw(st.integers(0, 300))
            variables[letter] = np.array(draw(_values(decimals, size)), dtype=np.float64)
    comments = tuple(draw(st.lists(_TEXT, max_size=2)))
    return RawSession(header=header, variables=variables, comments=comments)


@st.composite
def _file(draw: st.DrawFn) -> tuple[list[RawSession], dict[str, object]]:
    decimals = draw(st.sampled_from([3, 5, None]))
    n = draw(st.integers(1, 4))
    sessions = [draw(_session(decimals, i)) for i in range(n)]
    options = {
        "decimals": decimals,
        "columns": draw(st.integers(1, 8)),
        "newline": draw(st.sampled_from(["\r\n", "\n", "\r"])),
        "file_line": draw(st.one_of(st.none(), _TEXT)),
    }
    return sessions, options


@ROUND_TRIP
@given(_file())
def test_round_trip(case: tuple[list[RawSession], dict[str, object]]) -> None:
    sessions, options = case
    data = format_medpc(sessions, **options)  # type: ignore[arg-type]
    parsed = parse_medpc(data)
    assert parsed.problems == ()
    assert len(parsed.sessions) == len(sessions)
    for i, (got, want) in enumerate(zip(parsed.sessions, sessions, strict=True)):
        expected_header = dict(want.header)
        if options["file_line"] is not None:
            expected_header = {"File": options["file_line"], **expected_header}
        assert dict(got.header) == expected_header
        assert got.block == i
        assert got.comments == want.comments
        assert list(got.variables) == list(want.variables)
        for letter, value in want.variables.items():
            other = got.variables[letter]
            if isinstance(value, np.ndarray):
                assert isinstance(other, np.ndarray) and other.dtype == np.float64
                assert other.tolist() == value.tolist()
            else:
                assert isinstance(other, float) and other == value


# ---------------------------------------------------------------------------------------
# Fuzzing: whatever the bytes, only MedPCFormatError escapes
# ---------------------------------------------------------------------------------------

_FRAGMENTS = [
    "File: C:\\MED-PC IV\\DATA\\x",
    "Start Date: 03/14/26",
    "Start Date:",
    "End Date: 03/14/26",
    "Subject: R7",
    "Subject:OO M1",
    "Box: 5",
    "Start Time:  9:02:11",
    "MSN: SA_FR1",
    "A:       1.000",
    "B:",
    "C:  -1e5",
    "Z: nan",
    "     0:        1.000        2.000       -3.000        0.000        5.000",
    "     5:        6.000",
    "     5:   11    2 1.5E2",
    "999999999:        1.000",
    "     0:1.0.0 --1 e5 +",
    "\\comment",
    "",
    " ",
    "\t\t",
    "\x00\x00",
    "\ufeff",
    "\u2028",
    "\x85",
    "\x1c",
    "é",
    ":",
    "1" * 200,
]


@st.composite
def _shaped(draw: st.DrawFn) -> bytes:
    parts = draw(
        st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.text(max_size=12)), max_size=40)
    )
    ends = st.sampled_from(["\r\n", "\n", "\r", "\r\r\n", "", " "])
    text = "".join(part + draw(ends) for part in parts)
    codec = draw(st.sampled_from(["utf-8", "utf-8-sig", "cp1252", "utf-16", "utf-16-le"]))
    data = text.encode(codec, errors="replace")
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + draw(st.binary(max_size=8))
    return data


_SMALL = Limits(max_file_bytes=20_000, max_line_chars=300, max_array_values=20, max_blocks=3)


def _check(data: bytes, limits: Limits | None) -> None:
    try:
        parsed = parse_medpc(data) if limits is None else parse_medpc(data, limits=limits)
    except MedPCFormatError as exc:
        assert exc.reason_code
        assert exc.message
        return
    assert isinstance(parsed, ParsedFile)
    for s in parsed.sessions:
        for value in s.variables.values():
            assert isinstance(value, float | np.ndarray)


@settings(PROFILE)
@given(st.binary(max_size=3000), st.sampled_from([None, _SMALL]))
def test_fuzz_bytes(data: bytes, limits: Limits | None) -> None:
    _check(data, limits)


@settings(PROFILE)
@given(_shaped(), st.sampled_from([None, _SMALL]))
def test_fuzz_medpc_shaped(data: bytes, limits: Limits | None) -> None:
    _check(data, limits)
