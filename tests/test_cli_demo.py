"""`labpipe demo` end to end through the real command line, then the analyst's commands."""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

import openpyxl
import pytest

from labfolder import invoke


@pytest.fixture(scope="module")
def demo_lab(tmp_path_factory) -> tuple[Path, str]:
    lab = tmp_path_factory.mktemp("cli_demo") / "lab"
    code, out, err = invoke(["demo", str(lab)])
    assert code == 0, err
    return lab, out


def _hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_demo_ingests_reports_and_prints_where_the_report_is(demo_lab):
    lab, out = demo_lab
    index = lab / "reports" / "coc-rein-2026" / "index.html"
    assert f"Report: {index}" in out
    assert index.stat().st_size > 50_000
    assert "Sessions added: 567" in out
    assert "UNKNOWN_SUBJECT" in out and "TRUNCATED_BLOCK" in out
    for name in ("timeline", "reinstatement", "time_course", "intake", "criteria"):
        for ext in ("svg", "pdf", "png"):
            assert (index.parent / "figures" / f"{name}.{ext}").exists()
    for table in ("sessions", "subjects", "tests", "stats", "time_bins"):
        assert (index.parent / "tables" / f"{table}.csv").exists()
    # The generator's catheter failure (R07, acquisition days 8 and 9) is listed for a
    # patency check, between the quality-check list and the set-aside files.
    page = index.read_text(encoding="utf-8")
    section = page.split("catheter-failure signature: check", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr><td>(R\d+)</td><td>[^<]*</td><td>(\w+)</td>\s*<td[^>]*>(\d+)<", section)
    assert rows == [("R07", "acquisition", "8"), ("R07", "acquisition", "9")]


def test_extinction_outputs_show_the_first_run_and_name_the_re_extinction(demo_lab):
    lab, _ = demo_lab
    out = lab / "reports" / "coc-rein-2026"
    with (out / "tables" / "sessions.csv").open(encoding="utf-8", newline="") as fh:
        sessions = list(csv.DictReader(fh))
    ext = [r for r in sessions if r["phase"] == "extinction"]
    later = [r for r in ext if r["re_extinction"] == "True"]
    assert later and len(later) < len(ext)
    first_days = {
        int(r["day_in_phase"])
        for r in ext
        if r["re_extinction"] == "False"
        and r["analyzable"] == "True"
        and r["excluded_subject"] == "False"
    }
    # Prism's extinction sheet: one row a day of the first run, none after a test.
    sheet = openpyxl.load_workbook(out / "tables" / "labpipe.xlsx")["Prism ext active"]
    days = [c.value for c in sheet["A"][2:] if c.value is not None]
    assert days == sorted(first_days)
    methods = (out / "methods.md").read_text(encoding="utf-8")
    assert f"{len(later)} extinction sessions after an animal's first reinstatement" in methods
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "Extinction is the first run: re-extinction sessions between tests" in page


def test_report_again_gives_byte_identical_outputs(demo_lab):
    lab, _ = demo_lab
    report_dir = lab / "reports" / "coc-rein-2026"
    before = _hashes(report_dir)
    code, out, err = invoke(["report", "--config", str(lab / "configs" / "experiment.toml")])
    assert code == 0, err
    assert _hashes(report_dir) == before


def test_ingest_again_reads_nothing_and_still_names_the_set_aside_files(demo_lab):
    lab, _ = demo_lab
    code, out, _ = invoke(["ingest", "--config", str(lab / "configs" / "experiment.toml")])
    assert code == 1  # the demo's designed defects stay set aside until someone fixes them
    assert "0 ingested" in out and "357 unchanged" in out
    assert "R1O" in out


def test_export_xlsx_has_numbers_as_numbers(demo_lab, tmp_path):
    lab, _ = demo_lab
    code, out, err = invoke(
        [
            "export",
            "--config",
            str(lab / "configs" / "experiment.toml"),
            "--format",
            "xlsx",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0, err
    book = openpyxl.load_workbook(next(tmp_path.glob("*.xlsx")))
    ws = book["subjects"] if "subjects" in book.sheetnames else book.worksheets[1]
    values = [c.value for row in ws.iter_rows(min_row=2) for c in row]
    assert any(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    cells = [c for sheet in book.worksheets for row in sheet.iter_rows() for c in row]
    assert not any(c.data_type == "f" for c in cells)


def test_status_lists_every_animal(demo_lab):
    lab, _ = demo_lab
    code, out, _ = invoke(["status", "--config", str(lab / "configs" / "experiment.toml")])
    assert code == 1
    for subject in ("R01", "R12", "R24"):
        assert subject in out
    assert "567 sessions stored" in out
    assert "non-acquirer" in out  # R12's exclusion, from the acquisition criterion
    assert "ready_for_test" in out and "extinction_met" in out
