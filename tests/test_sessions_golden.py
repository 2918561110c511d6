"""Pinned outputs of ``identify`` and ``map_session``: speed work must not change a bit.

Every session of several sources is identified and mapped under several configs, and the
outcome — every identity field; the record's keys in order with their values' types and
reprs (a float's repr is its exact bits); the event arrays' type, dtype, shape and bytes
(times) or values (names); or the exception's type, message, reason code and hint — is
hashed. The digests were recorded from the mapping as it was before it was optimised
(``tests/sessions_golden.json``); a test fails when any one of them differs.

Sources:

* ``demo`` — the demo lab (``labpipe.demo.write_demo``: SA/EXT files with count scalars and
  padded time arrays, REIN files with a TIME.CODE event array, an unknown subject);
* ``scaled`` — 200 files of the benchmark lab (``labpipe.demo.write_scaled_lab``);
* ``synthetic`` — seeded sessions built here, most of them well formed and the rest with
  every defect the mapping has a message for (bad dates and times, DST changes, sessions
  past midnight, missing header fields, unknown subjects and programs, counts that are
  arrays, negative or fractional, times that are scalars, unsorted or padded, event arrays
  with unknown codes, negative values or presses logged twice);
* ``corpus`` — the real MED-PC files of ``../shared/corpus/medpc`` (skipped when absent).

The demo, scaled and corpus sessions come through the MED-PC reader, so these digests also
pin the values it reads (the synthetic ones do not). Run
``python tests/test_sessions_golden.py --write`` to record the digests again; only do so
for a deliberate change of the mapping (and bump ``MAPPING_VERSION`` then) or of what the
reader returns, with the committed ``labpipe`` (not a half-edited working tree).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from labpipe import demo, medpc
from labpipe.config import Events, Experiment, Levers, Source, load_config
from labpipe.errors import SessionError
from labpipe.model import RawSession, Reason
from labpipe.sessions import identify, map_session

sys.path.insert(0, str(Path(__file__).resolve().parent))

from labfolder import CONFIG, ROSTER, make_lab  # noqa: E402

GOLDEN = Path(__file__).resolve().parent / "sessions_golden.json"
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "medpc"

#: Sessions per digest: a failure names the chunk, small enough to find the session.
CHUNK = 16


# ---- what is pinned -----------------------------------------------------------------------


def outcome(raw: RawSession, cfg: Experiment, source_file: str) -> str:
    """Return every observable output of identifying and mapping ``raw`` as text.

    Parameters
    ----------
    raw
        The session.
    cfg
        The config to map it with.
    source_file
        Passed to :func:`map_session`.

    Returns
    -------
    str
        A repr of the identity and of the mapped session, or of the exception raised.
    """
    ident = identify(raw)
    out: list[Any] = [("identity", ident.session_id, ident.key, ident.slot, ident.fingerprint)]
    try:
        mapped = map_session(raw, cfg, source_file=source_file, identity=ident)
    except Exception as exc:  # every exception, SessionError or not, is part of the output
        out.append(
            (
                "error",
                type(exc).__name__,
                str(exc),
                getattr(exc, "message", None),
                str(getattr(exc, "reason_code", None)),
                getattr(exc, "hint", None),
            )
        )
    else:
        out.append(("identity_kept", mapped.identity == ident))
        out.append(("record", [(k, type(v).__name__, repr(v)) for k, v in mapped.record.items()]))
        t, n = mapped.event_t, mapped.event_name
        out.append(("event_t", type(t).__name__, t.dtype.str, t.shape, t.tobytes().hex()))
        names = [(type(x).__name__, x) for x in n.tolist()]
        out.append(("event_name", type(n).__name__, n.dtype.str, n.shape, names))
    return repr(out)


def digests(raws: list[RawSession], cfg: Experiment, source: str) -> list[str]:
    """Return one digest per :data:`CHUNK` sessions of ``raws`` mapped with ``cfg``."""
    out = []
    for start in range(0, len(raws), CHUNK):
        h = hashlib.sha256()
        for i in range(start, min(start + CHUNK, len(raws))):
            h.update(outcome(raws[i], cfg, f"{source}/{i}").encode("utf-8"))
            h.update(b"\0")
        out.append(h.hexdigest()[:16])
    return out


# ---- the configs ---------------------------------------------------------------------------


def _corrected(cfg: Experiment, raws: list[RawSession]) -> Experiment:
    """Map every third session to a roster animal through corrections.csv."""
    subjects = list(cfg.roster)
    fixes = {
        identify(raw).session_id: subjects[i % len(subjects)]
        for i, raw in enumerate(raws)
        if i % 3 == 0
    }
    return cfg.model_copy(update={"corrections": fixes})


#: Variant name -> config made from a source's own config and its sessions.
VARIANTS: dict[str, Callable[[Experiment, list[RawSession]], Experiment]] = {
    "base": lambda cfg, raws: cfg,
    "no_levers": lambda cfg, raws: cfg.model_copy(update={"levers": None}),
    "no_events": lambda cfg, raws: cfg.model_copy(update={"events": None}),
    "times_only": lambda cfg, raws: cfg.model_copy(
        update={
            "levers": Levers(left=Source(times="L"), right=Source(times="R")),
            "reinforcers": Source(times="I"),
            "timeout_presses": None,
        }
    ),
    "lever_times_only": lambda cfg, raws: cfg.model_copy(
        update={
            "levers": Levers(left=Source(times="L"), right=Source(times="R")),
            "reinforcers": None,
            "timeout_presses": None,
            "events": None,
        }
    ),
    "counts_only": lambda cfg, raws: cfg.model_copy(
        update={
            "levers": Levers(left=Source(count="A"), right=Source(count="B")),
            "reinforcers": Source(count="C"),
            "timeout_presses": Source(count="D", times="T"),
        }
    ),
    "events_c": lambda cfg, raws: cfg.model_copy(
        update={
            "levers": None,
            "events": Events(
                array="C",
                tick_seconds=0.05,
                codes={
                    1: "left_press",
                    2: "right_press",
                    3: "reinforcer",
                    5: "timeout_press",
                    6: "left_press",
                    7: "cue_on",
                },
            ),
        }
    ),
    "events_l": lambda cfg, raws: cfg.model_copy(
        update={
            "events": Events(
                array="L",
                tick_seconds=0.1,
                codes={
                    code: ("left_press", "right_press", "reinforcer", "timeout_press", "cue_on")[
                        code % 5
                    ]
                    for code in range(0, 1000, 10)
                },
            ),
        }
    ),
    "london": lambda cfg, raws: cfg.model_copy(update={"timezone": "Europe/London"}),
    "lord_howe": lambda cfg, raws: cfg.model_copy(update={"timezone": "Australia/Lord_Howe"}),
    "corrected": _corrected,
}


# ---- the sources ---------------------------------------------------------------------------


def _parse_tree(raw_dir: Path) -> list[RawSession]:
    out: list[RawSession] = []
    for path in sorted(p for p in raw_dir.rglob("*") if p.is_file()):
        out.extend(medpc.parse_medpc(path.read_bytes()).sessions)
    return out


def _demo(tmp: Path) -> tuple[Experiment, list[RawSession]]:
    demo.write_demo(tmp / "demo")
    return load_config(tmp / "demo" / "configs" / "experiment.toml"), _parse_tree(
        tmp / "demo" / "data" / "raw"
    )


def _scaled(tmp: Path) -> tuple[Experiment, list[RawSession]]:
    demo.write_scaled_lab(tmp / "scaled", n_files=200)
    return load_config(tmp / "scaled" / "configs" / "experiment.toml"), _parse_tree(
        tmp / "scaled" / "data" / "raw"
    )


def _test_config(tmp: Path, *, any_program: bool = False) -> Experiment:
    # The tests' lab config; with a last rule that takes any program (the corpus has many).
    config = CONFIG + '[[phases]]\nmsn = ".*"\nphase = "acquisition"\n' if any_program else CONFIG
    return load_config(make_lab(tmp, config=config, roster=ROSTER).config)


def _synthetic_source(tmp: Path) -> tuple[Experiment, list[RawSession]]:
    return _test_config(tmp / "synthetic"), synthetic()


def _corpus(tmp: Path) -> tuple[Experiment, list[RawSession]]:
    files = [p for p in sorted(CORPUS.rglob("*")) if p.is_file() and p.name != "SOURCES.md"]
    raws: list[RawSession] = []
    for path in files:
        raws.extend(medpc.parse_medpc(path.read_bytes()).sessions)
    # No corpus subject is in the tests' roster: corrections take every session in.
    cfg = _test_config(tmp / "corpus", any_program=True)
    subjects = list(cfg.roster)
    fixes = {identify(raw).session_id: subjects[i % 3] for i, raw in enumerate(raws)}
    return cfg.model_copy(update={"corrections": fixes}), raws


SOURCES: dict[str, Callable[[Path], tuple[Experiment, list[RawSession]]]] = {
    "demo": _demo,
    "scaled": _scaled,
    "synthetic": _synthetic_source,
    "corpus": _corpus,
}


def _pick(rng: np.random.Generator, common: Any, rare: list[Any], p_rare: float) -> Any:
    if rng.random() >= p_rare:
        return common
    return rare[int(rng.integers(len(rare)))]


def _times(rng: np.random.Generator, n: int) -> list[float]:
    return [round(float(x), 2) for x in np.sort(rng.uniform(0.01, 7200.0, n))]


def _clock(rng: np.random.Generator, hour: int) -> str:
    # MED-PC pads the hour with a space: " 9:05:33".
    return f"{hour:2d}:{int(rng.integers(60)):02d}:{int(rng.integers(60)):02d}"


def synthetic(n: int = 1500, seed: int = 20260302) -> list[RawSession]:
    """Return ``n`` seeded sessions in the tests' program layouts, some of them broken.

    Parameters
    ----------
    n
        Number of sessions.
    seed
        Seed of the generator; the same seed gives the same sessions.

    Returns
    -------
    list of RawSession
        SA/EXT sessions (counts A-D, times L/R/I) and REIN sessions (TIME.CODE array E,
        tick 0.01 s), some with both.
    """
    rng = np.random.default_rng(seed)
    out: list[RawSession] = []
    for i in range(n):
        day = int(rng.integers(1, 29))
        date = _pick(
            rng,
            f"03/{day:02d}/26",
            ["3/2/2026", "03/08/26", "11/01/26", "12/31/26", "02/29/24", "02/29/23"]
            + ["13/01/24", "", "03-02-26", " 03/02/26", "01/01/69", "01/01/68", "3/8/26"],
            0.2,
        )
        hour = int(rng.integers(7, 17))
        start = _pick(
            rng,
            _clock(rng, hour),
            ["09:00:00", "9:00:00", "23:30:00", "01:30:00", "02:30:00", "00:00:00"]
            + ["25:00:00", "9:60:00", "", "9:00", "01:59:59"],
            0.15,
        )
        end = _pick(
            rng,
            _clock(rng, hour + int(rng.integers(1, 3))),
            ["11:00:00", "01:30:00", "08:59:59", "03:30:00", "", "24:00:00", "1:00"]
            + ["02:30:00", "00:00:00"],
            0.15,
        )
        header: dict[str, str] = {}
        if rng.random() < 0.3:
            header["File"] = f"C:\\MED-PC IV\\DATA\\!2026-03-{day:02d}_0{i % 10}h00m.Subject R1"
        header["Start Date"] = date
        end_date = _pick(rng, date, [None, "", f"03/{day % 28 + 1:02d}/26", "03/01/26", "x"], 0.4)
        if end_date is not None:
            header["End Date"] = end_date
        subject = _pick(
            rng,
            ["R1", "R2", "R3"][i % 3],
            [" r2 ", "R 1", "Rl", "R1O", "X99", "", "R3  ", "r3", "ŕ1", "OO  M1", None],
            0.15,
        )
        if subject is not None:
            header["Subject"] = subject
        header["Experiment"] = "test"
        header["Group"] = "1"
        box = _pick(rng, str(int(rng.integers(1, 13))), [" 3 ", "", "A", "007", None], 0.08)
        if box is not None:
            header["Box"] = box
        header["Start Time"] = start
        if rng.random() > 0.03:
            header["End Time"] = end
        kind = ["sa", "ext", "rein", "both"][int(rng.integers(4))]
        msn = {"sa": "SA_FR1_2h", "ext": "EXT_1h", "rein": "REIN_CUE_2h", "both": "REIN_CUE_x"}
        header["MSN"] = _pick(rng, msn[kind], ["NOPE", "", " SA_FR1_2h ", "sa_fr1_2h"], 0.05)
        out.append(
            RawSession(
                header=header, variables=_variables(rng, kind), block=int(rng.integers(0, 6))
            )
        )
    return out


def _variables(rng: np.random.Generator, kind: str) -> dict[str, float | np.ndarray]:
    variables: dict[str, float | np.ndarray] = {}
    big = rng.random() < 0.05
    if kind in ("sa", "ext", "both"):
        sizes = {
            letter: int(rng.integers(0, 300 if big else 30)) if rng.random() > 0.1 else 0
            for letter in "LRI"
        }
        sizes["D"] = int(rng.integers(0, 5))
        for count, times in (("A", "L"), ("B", "R"), ("C", "I"), ("D", None)):
            n = sizes[times or "D"]
            value: Any = _pick(
                rng,
                float(n),
                [None, np.array([1.0, 2.0]), -1.0, 2.5, float(n + 3), 0.0, float("nan")],
                0.08,
            )
            if value is not None:
                variables[count] = value
        for letter in "LRI":
            stamps = _times(rng, sizes[letter])
            if stamps and rng.random() < 0.1:
                rng.shuffle(stamps)  # a program that does not write times in order
            if stamps and rng.random() < 0.05:
                stamps[int(rng.integers(len(stamps)))] = 0.0  # a zero inside the real times
            if stamps and rng.random() < 0.05:
                # Values no chamber writes, but a parser could hand over: NaN, -0.0 (also
                # beside 0.0), infinities, negative times.
                odd = [float("nan"), -0.0, float("inf"), -float("inf"), -5.0, 0.0, -0.0]
                for _ in range(int(rng.integers(1, 4))):
                    stamps[int(rng.integers(len(stamps)))] = odd[int(rng.integers(len(odd)))]
            arr = np.array(stamps + [0.0] * int(rng.integers(0, 20)), dtype=np.float64)
            if rng.random() < 0.02:
                arr = np.repeat(arr, 2)[::2]  # a strided view: same values, not contiguous
            elif rng.random() < 0.02:
                arr = arr.astype(np.float32)
            value = _pick(rng, arr, [None, 3.0, np.empty(0, dtype=np.float64)], 0.06)
            if value is not None:
                variables[letter] = value
    if kind in ("rein", "both"):
        n = int(rng.integers(0, 400 if big else 40))
        ticks = np.sort(rng.integers(1, 720_000, n))
        codes = rng.choice(
            [1, 2, 3, 4, 5, 9, 0, 12], n, p=[0.3, 0.2, 0.1, 0.15, 0.1, 0.05] + [0.05] * 2
        )
        events = [(int(t), int(c)) for t, c in zip(ticks, codes, strict=True)]
        # Presses during time-out: logged as the lever code and code 5 at the same tick.
        events += [(t, 5) for t, c in events if c in (1, 2) and rng.random() < 0.3]
        if events and rng.random() < 0.2:
            events.append(events[0])  # the very same event written twice
        if rng.random() < 0.1:
            rng.shuffle(events)
        values = [t + c / 1000 for t, c in events]
        if values and rng.random() < 0.03:
            values[int(rng.integers(len(values)))] = -values[0]
        arr = np.array(values + [0.0] * int(rng.integers(0, 10)), dtype=np.float64)
        variables["E"] = _pick(rng, arr, [3.0, np.empty(0, dtype=np.float64)], 0.04)
        if kind == "rein" and rng.random() < 0.5:
            variables["A"] = float(sum(c == 1 for _, c in events))
            variables["B"] = float(sum(c == 2 for _, c in events))
    if rng.random() < 0.3:
        variables["Z"] = float(rng.integers(0, 100))
        variables["T"] = np.array(_times(rng, int(rng.integers(0, 8))) + [0.0] * 3)
    if rng.random() < 0.2:
        letters = list(variables)
        rng.shuffle(letters)
        variables = {k: variables[k] for k in letters}
    return variables


# ---- the tests -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    cache: dict[str, Any] = {}

    def get(name: str) -> tuple[Experiment, list[RawSession]]:
        if name not in cache:
            cache[name] = SOURCES[name](tmp_path_factory.mktemp(name))
        return cache[name]

    yield {"get": get}


def _golden() -> dict[str, Any]:
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("source", list(SOURCES))
def test_outputs_are_the_pinned_ones(sources: dict[str, Any], source: str, variant: str) -> None:
    if source == "corpus" and not CORPUS.is_dir():
        pytest.skip("../shared/corpus/medpc is absent")
    cfg, raws = sources["get"](source)
    expected = _golden()["cases"][f"{source}/{variant}"]
    assert len(raws) == expected["sessions"]
    got = digests(raws, VARIANTS[variant](cfg, raws), source)
    bad = [i for i, (a, b) in enumerate(zip(got, expected["chunks"], strict=True)) if a != b]
    assert not bad, (
        f"{source}/{variant}: outputs differ in sessions "
        f"{[(i * CHUNK, i * CHUNK + CHUNK - 1) for i in bad[:5]]} (of {len(raws)})"
    )


def test_synthetic_sessions_reach_every_outcome(sources: dict[str, Any]) -> None:
    # The synthetic source is only worth pinning if it goes down every path.
    cfg, raws = sources["get"]("synthetic")
    reasons: dict[str, int] = {}
    mapped = 0
    for i, raw in enumerate(raws):
        try:
            map_session(raw, cfg, source_file=str(i))
        except SessionError as exc:
            reasons[str(exc.reason_code)] = reasons.get(str(exc.reason_code), 0) + 1
        except ValueError:
            reasons["ValueError"] = reasons.get("ValueError", 0) + 1
        else:
            mapped += 1
    assert mapped > len(raws) // 3
    assert set(reasons) >= {
        Reason.UNKNOWN_SUBJECT,
        Reason.UNKNOWN_PHASE,
        Reason.BAD_DATE,
        Reason.BAD_HEADER,
        Reason.BAD_VALUE,
        Reason.BAD_EVENT_CODE,
        "ValueError",
    }


def test_identity_given_or_not_is_the_same_mapping(sources: dict[str, Any]) -> None:
    cfg, raws = sources["get"]("synthetic")
    for raw in raws[:300]:
        try:
            given = map_session(raw, cfg, source_file="x", identity=identify(raw))
        except (SessionError, ValueError) as exc:
            with pytest.raises(type(exc)) as again:
                map_session(raw, cfg, source_file="x")
            assert str(again.value) == str(exc)
            continue
        computed = map_session(raw, cfg, source_file="x")
        assert computed.identity == given.identity
        assert computed.record == given.record
        assert computed.event_t.tobytes() == given.event_t.tobytes()
        assert computed.event_name.tolist() == given.event_name.tolist()


def _write(tmp: Path) -> None:
    cases: dict[str, Any] = {}
    for source, make in SOURCES.items():
        if source == "corpus" and not CORPUS.is_dir():
            raise SystemExit("the corpus is absent: the golden file needs it")
        cfg, raws = make(tmp / source)
        for variant, vary in VARIANTS.items():
            cases[f"{source}/{variant}"] = {
                "sessions": len(raws),
                "chunks": digests(raws, vary(cfg, raws), source),
            }
    text = json.dumps({"chunk": CHUNK, "cases": cases}, indent=1, sort_keys=True) + "\n"
    GOLDEN.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    import tempfile
    import warnings

    # As under pytest (filterwarnings = error): a numpy warning is an exception, pinned too.
    warnings.simplefilter("error")

    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python tests/test_sessions_golden.py --write")
    with tempfile.TemporaryDirectory() as d:
        _write(Path(d))
