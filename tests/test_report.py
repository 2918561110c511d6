"""Report: index.html, CSV, XLSX (Prism sheets), methods.md, export, safety, determinism.

The browser test opens index.html in real headless Chromium through the DevTools protocol
(``--remote-debugging-pipe``, standard library only): no console errors, no network
request, every figure laid out and visible, a screenshot. Without Chromium it is skipped,
unless ``CI=true``, where a missing browser fails the test.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import html
import json
import os
import re
import select
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import openpyxl
import pandas as pd
import pytest

from labpipe import figures, report
from labpipe.errors import ConfigError, InternalError
from test_figures import GROUPS, simulate_tables

GENERATED = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
PAYLOADS = ("<script>alert(1)</script>", '=HYPERLINK("http://x")', '"><svg onload=alert(1)>')


def _context(experiment: str = "coc-rein-2026") -> report.ReportContext:
    return report.ReportContext(
        experiment=experiment,
        drug="cocaine",
        dose_mg_per_kg=0.5,
        timezone="America/New_York",
        timezone_is_default=False,
        factors=["group", "sex"],
        criteria=[
            "Acquisition: each of the last 3 acquisition sessions with at least 10 "
            "reinforcers and active presses at least 2 times inactive presses.",
            "Extinction: active presses at most 25% of the mean of the last 3 acquisition "
            "sessions on 2 consecutive extinction sessions.",
        ],
        labpipe_version="0.1.0",
        config_fingerprint="f" * 64,
        raw_file_count=312,
        generated_at=GENERATED,
        settings={"baseline_sessions": 2, "time_bin_minutes": 15, "aborted_fraction": 0.8},
    )


def _run(out: Path, tables: dict, events: pd.DataFrame, ctx: report.ReportContext) -> list[Path]:
    figs = figures.make_figures(tables, events, out_dir=out / "figures", group_order=list(GROUPS))
    written = [p for f in figs for p in f.paths.values()]
    return written + report.write_report(out, tables=tables, figures=figs, context=ctx)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Path]]:
    """Two complete runs (figures + report) on the same input, in two folders."""
    root = tmp_path_factory.mktemp("report")
    tables, events = simulate_tables()
    written = _run(root / "a", tables, events, _context())
    _run(root / "b", tables, events, _context())
    return root / "a", root / "b", written


class _DomScan(HTMLParser):
    """Collects what could run or load: script elements, on* attributes, URLs."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.scripts = 0
        self.handlers: list[str] = []
        self.urls: list[str] = []
        self.text: list[str] = []
        self.meta_csp: list[str] = []
        self.svgs = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scripts += 1
        if tag == "svg":
            self.svgs += 1
        a = dict(attrs)
        if tag == "meta" and (a.get("http-equiv") or "").lower() == "content-security-policy":
            self.meta_csp.append(a.get("content") or "")
        for name, value in attrs:
            if name.lower().startswith("on"):
                self.handlers.append(name)
            if name.lower() in ("href", "src", "xlink:href", "action", "srcset") and value:
                self.urls.append(value)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _scan(path: Path) -> _DomScan:
    scan = _DomScan()
    scan.feed(path.read_text(encoding="utf-8"))
    return scan


def test_report_writes_every_output(runs: tuple[Path, Path, list[Path]]) -> None:
    a, _, written = runs
    names = {p.relative_to(a).as_posix() for p in written}
    for table in ("sessions", "subjects", "tests", "stats", "time_bins", "set_aside"):
        assert f"tables/{table}.csv" in names
    assert {"tables/labpipe.xlsx", "methods.md", "index.html"} <= names
    for key in ("timeline", "reinstatement", "time_course", "intake", "criteria"):
        for fmt in ("svg", "pdf", "png"):
            assert f"figures/{key}.{fmt}" in names
    on_disk = {p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file()}
    assert on_disk == names  # no temporary files left behind
    umask = os.umask(0)
    os.umask(umask)
    for p in written:
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, p


def test_same_input_same_bytes(runs: tuple[Path, Path, list[Path]]) -> None:
    a, b, written = runs
    for p in written:
        rel = p.relative_to(a)
        assert (b / rel).read_bytes() == p.read_bytes(), rel


def test_html_is_one_self_contained_page(runs: tuple[Path, Path, list[Path]]) -> None:
    a, _, _ = runs
    page = (a / "index.html").read_text(encoding="utf-8")
    scan = _scan(a / "index.html")
    assert scan.meta_csp == ["default-src 'none'; img-src data:; style-src 'unsafe-inline'"]
    assert scan.scripts == 0 and scan.handlers == []
    # links go to the page's own anchors or files beside it, never to the network
    for url in scan.urls:
        assert url.startswith("#") or not any(s in url for s in (":", "//")), url
    assert "<img" not in page and "<link" not in page
    figs = sorted(p.stem for p in (a / "figures").glob("*.svg"))
    assert scan.svgs == len(figs)
    for key in figs:
        assert f'id="fig-{key}"' in page
    text = html.unescape(" ".join(scan.text))
    for words in (
        "Experiment summary",
        "Animals and exclusions",
        "did not meet the acquisition criterion",
        "Subject R99 is not in the roster.",
        "This file is not a MED-PC data file.",
        "catheter failure",
        "at most 25% of the mean",
        "Methods and results in words",
        "Provenance",
        "f" * 64,
        "312",
        "2026-03-01T12:00:00+00:00",
    ):
        assert words in text, words


def test_statistics_sit_in_their_phase(runs: tuple[Path, Path, list[Path]]) -> None:
    a, _, _ = runs
    page = html.unescape((a / "index.html").read_text(encoding="utf-8"))
    sections = {
        sid: page[page.index(f'<section id="{sid}">') :].split("</section>", 1)[0]
        for sid in ("acquisition", "extinction", "reinstatement")
    }
    assert "F(3.10, 27.90) = 41.20, p < .001, ηp² = .82" in sections["acquisition"]
    assert "sphericity violated" in sections["acquisition"]
    assert "F(1, 9) = 2.05, p = .186" in sections["extinction"]
    rein = sections["reinstatement"]
    assert "t(5) = 5.57, p = .002, d_z = 2.27" in rein
    heads = [rein.index(f"<h3>{t} test</h3>") for t in ("Cue", "Drug-prime", "Stress")]
    assert heads == sorted(heads)
    assert 'id="fig-reinstatement"' in rein
    # APA numbers in the full table: p without leading zero, corrected df with decimals
    assert ">.062<" in sections["acquisition"] and ">3.10<" in sections["acquisition"]


def test_methods_md_has_the_numbers(runs: tuple[Path, Path, list[Path]]) -> None:
    a, _, _ = runs
    md = (a / "methods.md").read_text(encoding="utf-8")
    assert md.startswith("# Methods and results: coc-rein-2026")
    for words in (
        "12 rats entered the experiment (treated: n = 6; vehicle: n = 6)",
        "R03 (did not meet the acquisition criterion)",
        "0.5 mg/kg per infusion",
        "2 extinction sessions just before it",
        "Mixed ANOVA on active lever presses, session: F(3.10, 27.90) = 41.20, p < .001",
        "Cue test, paired t-test on active lever presses, vehicle: t(5) = 5.57",
        "Greenhouse-Geisser",
        "apostrophe",
    ):
        assert words in md, words


def test_csv_one_header_numbers_stay_numbers(runs: tuple[Path, Path, list[Path]]) -> None:
    a, _, _ = runs
    tables, _ = simulate_tables()
    for name in ("sessions", "tests", "stats"):
        raw = (a / "tables" / f"{name}.csv").read_bytes()
        assert not raw.startswith(b"\xef\xbb\xbf")
        assert raw.count(b"\r\n") == len(tables[name]) + 1  # RFC 4180 line ends
        back = pd.read_csv(a / "tables" / f"{name}.csv")
        assert list(back.columns) == list(tables[name].columns)
        assert len(back) == len(tables[name])
        for col in tables[name].columns:
            orig = tables[name][col]
            if pd.api.types.is_numeric_dtype(orig) and not pd.api.types.is_bool_dtype(orig):
                pd.testing.assert_series_equal(
                    back[col].astype("float64"),
                    orig.astype("float64").reset_index(drop=True),
                    check_names=False,
                )


def test_xlsx_sheets_prism_and_no_formulas(runs: tuple[Path, Path, list[Path]]) -> None:
    a, _, _ = runs
    wb = openpyxl.load_workbook(a / "tables" / "labpipe.xlsx")
    names = wb.sheetnames
    assert names[0] == "README"
    for table in ("sessions", "subjects", "tests", "stats", "time_bins", "set_aside"):
        assert table in names
    assert "Prism acq active" in names and "Prism ext active" in names
    assert "Prism cue active" in names and "Prism drug_prime inactive" in names
    for ws in wb.worksheets:
        for row in ws.iter_rows():
            for cell in row:
                assert cell.data_type != "f", (ws.title, cell.coordinate)
    # numbers are numbers
    ses = wb["sessions"]
    header = [c.value for c in ses[1]]
    active = header.index("active") + 1
    assert all(isinstance(ses.cell(r, active).value, int) for r in range(2, 20))
    # Prism XY: X column of days, groups over animals as replicate sub-columns
    xy = wb["Prism acq active"]
    groups = [c.value for c in xy[1]][1:]
    subjects = [c.value for c in xy[2]][1:]
    assert xy.cell(2, 1).value == "Day"
    assert [xy.cell(r, 1).value for r in range(3, 13)] == list(range(1, 11))
    assert groups == sorted(groups) and set(groups) == set(GROUPS)
    assert "R03" not in subjects  # excluded animal
    assert len(subjects) == 11
    assert all(isinstance(xy.cell(3, c).value, int | float) for c in range(2, 13))
    # Prism grouped: baseline/test rows x group, animals as sub-columns; R06's failed
    # drug-prime test is not there
    gr = wb["Prism drug_prime active"]
    assert gr.cell(3, 1).value == "Extinction baseline" and gr.cell(4, 1).value == "Test"
    assert "R06" not in [c.value for c in gr[2]]
    assert isinstance(gr.cell(4, 2).value, int | float)
    readme = [c.value for c in wb["README"]["A"]]
    assert "config fingerprint" in readme


def test_injection_is_inert_everywhere(tmp_path: Path) -> None:
    names = [*PAYLOADS, "$x$ <b>"] + [f"R{i:02d}" for i in range(5, 13)]
    tables, events = simulate_tables(
        subject_names=names, group_names=(PAYLOADS[1], PAYLOADS[2] + "<b>")
    )
    tables["set_aside"] = tables["set_aside"].assign(subject_raw=[PAYLOADS[0], PAYLOADS[2]])
    tables["stats"] = tables["stats"].assign(
        warnings=[PAYLOADS[0]] + [""] * (len(tables["stats"]) - 1)
    )
    written = _run(tmp_path, tables, events, _context(experiment=PAYLOADS[0]))

    # HTML: no element, handler or URL from the payloads; every payload is visible text
    scan = _scan(tmp_path / "index.html")
    assert scan.scripts == 0
    assert scan.handlers == []
    assert not [u for u in scan.urls if "javascript" in u.lower() or "http" in u.lower()]
    text = " ".join(scan.text)
    for payload in PAYLOADS:
        assert payload in text, payload
    for svg in (tmp_path / "figures").glob("*.svg"):
        body = svg.read_text(encoding="utf-8")
        assert "<script" not in body and "<svg onload" not in body and "<b>" not in body

    # XLSX: no formula cell anywhere; the payloads are plain strings
    wb = openpyxl.load_workbook(tmp_path / "tables" / "labpipe.xlsx")
    strings: set[str] = set()
    for ws in wb.worksheets:
        for row in ws.iter_rows():
            for cell in row:
                assert cell.data_type != "f", (ws.title, cell.coordinate, cell.value)
                if isinstance(cell.value, str):
                    strings.add(cell.value)
    for payload in PAYLOADS:
        assert payload in strings

    # CSV: a text cell that would start a formula starts with an apostrophe instead
    subjects = pd.read_csv(tmp_path / "tables" / "subjects.csv", keep_default_na=False)
    assert "'" + PAYLOADS[1] in set(subjects["subject"])
    assert "'" + PAYLOADS[1] in set(subjects["group"])
    assert PAYLOADS[0] in set(subjects["subject"])
    assert not any(str(v).startswith(("=", "+", "-", "@")) for v in subjects["subject"])
    sessions = pd.read_csv(tmp_path / "tables" / "sessions.csv")
    assert pd.api.types.is_numeric_dtype(sessions["active"])

    # methods.md: names cannot become markup there either
    md = (tmp_path / "methods.md").read_text(encoding="utf-8")
    # a backslash makes "<" literal in CommonMark: no tag can open
    assert not re.search(r"(?<!\\)<[A-Za-z/!?]", md)
    assert "\\<script>" in md
    assert written


def test_csv_guard_only_touches_text(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "text": ["=1+1", "+x", "-y", "@z", "\tt", "\rr", "  =pad", "plain", None],
            "number": [-0.5, 1.0, -2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
            "count": pd.array([-1, 2, 3, 4, 5, 6, 7, 8, None], dtype="Int64"),
        }
    )
    (path,) = report.export_tables({"t": df}, "csv", tmp_path)
    back = pd.read_csv(path, keep_default_na=False, dtype={"text": str})
    assert list(back["text"]) == [
        "'=1+1",
        "'+x",
        "'-y",
        "'@z",
        "'\tt",
        "'\rr",
        "'  =pad",
        "plain",
        "",
    ]
    assert back["number"].tolist() == df["number"].tolist()
    assert pd.read_csv(path)["count"].iloc[0] == -1


def test_export_formats(tmp_path: Path) -> None:
    tables, _ = simulate_tables(n_rats=4)
    csvs = report.export_tables(tables, "csv", tmp_path / "csv")
    assert sorted(p.name for p in csvs) == sorted(f"{n}.csv" for n in tables)
    (xlsx,) = report.export_tables(tables, "xlsx", tmp_path / "xlsx")
    assert xlsx.name == "labpipe.xlsx"
    assert "Prism acq active" in openpyxl.load_workbook(xlsx, read_only=True).sheetnames
    parquets = report.export_tables(tables, "parquet", tmp_path / "pq")
    back = pd.read_parquet(tmp_path / "pq" / "subjects.parquet")
    assert list(back["subject"]) == list(tables["subjects"]["subject"])
    assert len(parquets) == len(tables)
    with pytest.raises(ConfigError):
        report.export_tables(tables, "json", tmp_path / "json")


def test_empty_analysis_still_reports(tmp_path: Path) -> None:
    tables, _ = simulate_tables(n_rats=2)
    empty = {k: v.iloc[0:0] for k, v in tables.items()}
    ctx = report.ReportContext(experiment="empty", generated_at=None)
    written = report.write_report(tmp_path, tables=empty, figures=[], context=ctx)
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "No animals in the analysis yet." in page
    assert "Nothing was set aside." in page
    assert "time not recorded" in page
    assert len(written) == len(tables) + 3


def test_active_markup_in_a_figure_is_refused(tmp_path: Path) -> None:
    bad = figures.FigureInfo(
        key="x",
        title="x",
        caption="x",
        phase="overview",
        paths={},
        svg='<svg><g onclick="alert(1)"></g></svg>',
    )
    tables, _ = simulate_tables(n_rats=2)
    with pytest.raises(InternalError):
        report.write_report(tmp_path, tables=tables, figures=[bad], context=_context())
    assert not (tmp_path / "index.html").exists()


# ---------------------------------------------------------------------------- browser


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


class _Cdp:
    """A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe``.

    Chromium reads commands from fd 3 and writes replies and events to fd 4, each
    message a JSON object followed by a NUL byte.
    """

    def __init__(self, binary: str, profile: Path) -> None:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def wire() -> None:  # in the child, before exec
            os.dup2(to_child_r, 3)
            os.dup2(from_child_w, 4)

        self.proc = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-extensions",
                f"--user-data-dir={profile}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(3, 4),
            preexec_fn=wire,  # the test process runs no threads of its own
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._next = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self._from_child], [], [], left)
            if ready:
                chunk = os.read(self._from_child, 1 << 20)
                if not chunk:
                    raise EOFError("Chromium closed the DevTools pipe")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def send(
        self, method: str, params: dict | None = None, session: str | None = None, timeout=30
    ) -> dict:
        self._next += 1
        msg: dict = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        for ev in self.events:
            if ev.get("method") == method:
                return ev
        while True:
            ev = self._read_message(deadline)
            self.events.append(ev)
            if ev.get("method") == method:
                return ev

    def close(self) -> None:
        with contextlib.suppress(OSError, TimeoutError, EOFError, RuntimeError):
            self.send("Browser.close", timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_child, self._from_child):
            with contextlib.suppress(OSError):
                os.close(fd)


_FIGURES_VISIBLE = """
JSON.stringify({
  scripts: document.scripts.length,
  figures: [...document.querySelectorAll('figure')].map(f => {
    const svg = f.querySelector('svg');
    const r = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
    const cs = svg ? getComputedStyle(svg) : {display: 'none', visibility: 'hidden'};
    return {id: f.id, w: r.width, h: r.height, display: cs.display,
            visibility: cs.visibility, texts: svg ? svg.querySelectorAll('text').length : 0};
  }),
  width: document.documentElement.scrollWidth,
  viewport: window.innerWidth,
})
"""


@pytest.mark.browser
def test_report_in_headless_chromium(runs: tuple[Path, Path, list[Path]], tmp_path: Path) -> None:
    binary = _chromium()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but Chromium is missing: install it (apt-get install chromium)")
        pytest.skip("Chromium is not installed (apt-get install chromium); CI is not set")
    a, _, _ = runs
    url = (a / "index.html").resolve().as_uri()
    cdp = _Cdp(binary, tmp_path / "profile")
    try:
        target = cdp.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = cdp.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log", "Network"):
            cdp.send(f"{domain}.enable", session=session)
        cdp.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        cdp.events.clear()
        cdp.send("Page.navigate", {"url": url}, session=session)
        cdp.wait_for("Page.loadEventFired")
        result = cdp.send(
            "Runtime.evaluate",
            {"expression": _FIGURES_VISIBLE, "returnByValue": True},
            session=session,
        )
        state = json.loads(result["result"]["value"])
        shot = cdp.send(
            "Page.captureScreenshot",
            {"format": "png", "captureBeyondViewport": True},
            session=session,
        )
        # events that arrived after the last command
        time.sleep(0.3)
        cdp.send("Runtime.evaluate", {"expression": "1"}, session=session)
    finally:
        cdp.close()

    events = cdp.events
    requests = [
        e["params"]["request"]["url"]
        for e in events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    assert requests == [url], requests  # the page itself, nothing else
    errors = [
        e["params"]
        for e in events
        if (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
        or e.get("method") == "Runtime.exceptionThrown"
        or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
    ]
    assert errors == []
    assert state["scripts"] == 0
    expected = sorted(p.stem for p in (a / "figures").glob("*.svg"))
    assert sorted(f["id"].removeprefix("fig-") for f in state["figures"]) == expected
    for fig in state["figures"]:
        assert fig["w"] > 300 and fig["h"] > 100, fig
        assert fig["display"] != "none" and fig["visibility"] == "visible", fig
        assert fig["texts"] > 5, fig  # labels kept as text
    assert state["width"] <= state["viewport"]  # no horizontal overflow of the page
    png = base64.b64decode(shot["data"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 50_000
    (tmp_path / "report.png").write_bytes(png)
