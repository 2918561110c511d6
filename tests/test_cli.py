"""The command line: exit codes, stdout vs stderr, messages a lab tech can act on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from labpipe.cli import cli

from labfolder import invoke, make_lab, session

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "medpc"


def test_init_writes_a_lab_folder_that_loads(tmp_path):
    code, out, _ = invoke(["init", str(tmp_path / "lab")])
    assert code == 0
    assert (tmp_path / "lab" / "configs" / "experiment.toml").exists()
    assert (tmp_path / "lab" / "data" / "raw").is_dir()
    assert (tmp_path / "lab" / "reports").is_dir()
    assert "experiment.toml" in out


def test_ingest_exit_codes_and_summary(tmp_path):
    lab = make_lab(tmp_path / "lab")
    lab.add("good", [session("R1", left=[1, 2])])
    code, out, _ = invoke(["ingest", "--config", str(lab.config)])
    assert code == 0, out
    assert "1 ingested" in out and "Sessions added: 1" in out
    lab.add_bytes("empty.txt", b"")
    code, out, _ = invoke(["ingest", "--config", str(lab.config)])
    assert code == 1
    assert "EMPTY_FILE" in out and "empty.txt" in out
    code, out, _ = invoke(["status", "--config", str(lab.config)])
    assert code == 1
    assert "R1" in out and "1 sessions stored" in out


def test_invalid_config_exits_2_naming_file_and_key(tmp_path):
    lab = make_lab(tmp_path / "lab")
    text = lab.config.read_text().replace('count = "A"', 'count = "AA"', 1)
    lab.config.write_text(text)
    code, out, err = invoke(["ingest", "--config", str(lab.config)])
    assert code == 2
    assert "experiment.toml" in err and "levers.left.count" in err
    assert "Traceback" not in err


def test_missing_config_exits_2(tmp_path):
    code, _, err = invoke(["ingest", "--config", str(tmp_path / "nope.toml")])
    assert code == 2
    assert "nope.toml" in err


@pytest.mark.corpus
def test_inspect_json_is_lossless_on_a_real_file():
    path = CORPUS / "3c-lab__operant-data-pipeline" / "SF1_MedPC_example_txt"
    if not path.exists():
        pytest.skip("../shared/corpus is not beside the repository")
    code, out, _ = invoke(["inspect", "--json", str(path)])
    assert code == 0
    sessions = json.loads(out)
    assert len(sessions) == 12
    first = sessions[0]
    assert first["header"]["Subject"] == "M2169"
    assert first["variables"]["B"] == 44.0
    assert len(first["variables"]["U"]) == 2001


def test_inspect_text_needs_no_config(tmp_path):
    lab = make_lab(tmp_path / "lab")
    path = lab.add("r1", [session("OO M1", left=[1.5])])
    code, out, _ = invoke(["inspect", str(path)])
    assert code == 0
    assert "OO M1" in out


def test_inspect_of_a_non_medpc_file_says_so(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    code, _, err = invoke(["inspect", str(path)])
    assert code == 1
    assert "photo.png" in err or "MED-PC" in err


def test_the_installed_command_runs_as_a_real_process(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "labpipe", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert "ingest" in result.stdout


def test_click_group_lists_every_command():
    assert {"init", "demo", "inspect", "ingest", "status"} <= set(cli.commands)


def test_a_bug_is_one_line_on_stderr_with_the_traceback_in_the_log(tmp_path, monkeypatch):
    lab = make_lab(tmp_path / "lab")

    def broken(*args, **kwargs):
        raise RuntimeError("something labpipe did not expect")

    monkeypatch.setattr("labpipe.nightly.locked_ingest", broken)
    code, _, err = invoke(["ingest", "--config", str(lab.config)])
    assert code == 5
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("labpipe hit a bug")
    assert "Traceback" not in err
    log = (lab.processed / "logs" / "labpipe.log").read_text(encoding="utf-8")
    assert "something labpipe did not expect" in log and "Traceback" in log
