"""kill -9 at every named step and at random moments: the next run completes, nothing is
lost or stored twice, no temporary file is left, the catalog passes its integrity check.

Every run is a real ``python -m labpipe`` process; ``LABPIPE_CRASH_AT=step:n`` makes it
SIGKILL itself the n-th time it reaches ``step`` (labpipe.fsio.crash_point).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest

import runlab

from labfolder import Lab

INGEST_STEPS = [
    "mid_stage",
    "after_stage",
    "in_txn",
    "after_commit",
    "after_publish",
    "sessions_written",
]
STATUS_STEPS = ["mid_status"]


def _report_available() -> bool:
    try:
        from labpipe import pipeline  # noqa: F401
    except ImportError:
        return False
    return True


class Scenario:
    """Night 1 (days 0-1) already ingested; night 2 adds days 2-3 and is the one killed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.n = 0
        base = runlab.small_lab(root / "template", n_days=2)
        first = runlab.nightly(base, "--no-report")
        assert first.returncode == 0, first.stderr
        self.base = base
        # The clean reference: night 2 without a crash.
        ref = self.copy("reference")
        done = runlab.nightly(ref, "--no-report")
        assert done.returncode == 0, done.stderr
        self.clean_code = done.returncode
        self.clean = runlab.state(ref)
        self.clean_seconds = runlab.read_status(ref)["duration_s"]

    def copy(self, name: str | None = None) -> Lab:
        """A copy of the lab after night 1, with night 2's raw files added."""
        self.n += 1 if name is None else 0
        dest = self.root / (name or f"case{self.n}")
        shutil.copytree(self.base.root, dest)
        lab = Lab(dest, dict(self.base.written))
        runlab.add_days(lab, range(2, 4))
        return lab

    def check_recovers(self, lab: Lab, *args: str) -> None:
        again = runlab.nightly(lab, *args)
        assert again.returncode == self.clean_code, again.stderr
        assert runlab.state(lab) == self.clean
        runlab.assert_sound(lab)
        assert runlab.read_status(lab)["exit_code"] == self.clean_code


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    return Scenario(tmp_path_factory.mktemp("crash"))


@pytest.mark.parametrize("step", INGEST_STEPS + STATUS_STEPS)
def test_kill_at_each_named_step_then_the_next_run_completes(scenario: Scenario, step: str):
    lab = scenario.copy()
    raw_before = lab.raw_manifest()
    killed = runlab.nightly(lab, "--no-report", env={"LABPIPE_CRASH_AT": f"{step}:1"})
    assert killed.returncode == -signal.SIGKILL, (step, killed.stderr)
    scenario.check_recovers(lab, "--no-report")
    assert lab.raw_manifest() == raw_before


def test_kill_during_the_first_ever_run(tmp_path: Path):
    lab = runlab.small_lab(tmp_path / "lab", n_days=2, bad=True)
    ref = runlab.copy_lab(lab, tmp_path / "ref")
    clean = runlab.nightly(ref, "--no-report")
    assert clean.returncode == 1  # the empty file is set aside
    killed = runlab.nightly(lab, "--no-report", env={"LABPIPE_CRASH_AT": "in_txn:1"})
    assert killed.returncode == -signal.SIGKILL
    # Killed while a first ingest commits without its look-up indexes (built at its end).
    assert runlab.catalog_indexes(lab) == set()
    again = runlab.nightly(lab, "--no-report")
    assert again.returncode == 1
    assert runlab.state(lab) == runlab.state(ref)
    runlab.assert_sound(lab)


def _random_kills(scenario: Scenario, lab: Lab, rng: random.Random, kills: int) -> int:
    """Kill night 2 up to ``kills`` times at random moments of its work; return kills done."""
    done = 0
    info = lab.processed / ".labpipe.lock.info"
    window = max(0.05, scenario.clean_seconds * 1.2)
    for _ in range(kills):
        proc = runlab.start(lab, "nightly", "--settle-seconds", "0", "--no-report")
        # The work starts once the lock is taken (the holder file names this process).
        runlab.wait_for(lambda p=proc: f'"pid": {p.pid},' in _read(info) or p.poll() is not None)
        time.sleep(rng.uniform(0, window))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            done += 1
        proc.communicate(timeout=runlab.TIMEOUT)
        if proc.returncode == scenario.clean_code:
            break  # it finished before the kill
    return done


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


def _random_trials(scenario: Scenario, trials: int, seed: int) -> None:
    rng = random.Random(seed)
    total = 0
    for _ in range(trials):
        lab = scenario.copy()
        total += _random_kills(scenario, lab, rng, kills=rng.randint(1, 3))
        scenario.check_recovers(lab, "--no-report")
    assert total > 0, "no run was killed: the window is wrong"


def test_random_kills_a_handful(scenario: Scenario):
    _random_trials(scenario, trials=2, seed=1)


@pytest.mark.slow
def test_random_kills_many(scenario: Scenario):
    _random_trials(scenario, trials=25, seed=2)


@pytest.mark.slow
@pytest.mark.parametrize("step", INGEST_STEPS)
@pytest.mark.parametrize("nth", [1, 2])
def test_kill_at_each_step_of_a_two_batch_run(tmp_path: Path, step: str, nth: int):
    """300 files: two commit batches, killed in the first or the second."""
    from labpipe import demo

    lab_dir = tmp_path / "big"
    demo.write_scaled_lab(lab_dir, n_files=300, seed=3)
    lab = Lab(lab_dir)
    ref_dir = tmp_path / "ref"
    shutil.copytree(lab_dir, ref_dir)
    ref = Lab(ref_dir)
    clean = runlab.nightly(ref, "--no-report", "--workers", "2")
    killed = runlab.nightly(
        lab, "--no-report", "--workers", "2", env={"LABPIPE_CRASH_AT": f"{step}:{nth}"}
    )
    assert killed.returncode == -signal.SIGKILL
    again = runlab.nightly(lab, "--no-report", "--workers", "2")
    assert again.returncode == clean.returncode, again.stderr
    assert runlab.state(lab) == runlab.state(ref)
    runlab.assert_sound(lab)


@pytest.mark.skipif(not _report_available(), reason="labpipe.pipeline (the report) not importable")
@pytest.mark.slow
def test_kill_in_the_middle_of_the_report_then_the_report_is_rebuilt(tmp_path: Path):
    from labpipe import demo

    lab_dir = tmp_path / "demo"
    demo.write_demo(lab_dir)
    lab = Lab(lab_dir)
    ref_dir = tmp_path / "ref"
    shutil.copytree(lab_dir, ref_dir)
    ref = Lab(ref_dir)
    clean = runlab.nightly(ref)
    assert clean.returncode in (0, 1), clean.stderr
    assert runlab.read_status(ref)["report"]["built"]
    # 1. the named step: after the report files, before it is recorded as built
    killed = runlab.nightly(lab, env={"LABPIPE_CRASH_AT": "mid_report:1"})
    assert killed.returncode == -signal.SIGKILL
    again = runlab.nightly(lab)
    assert again.returncode == clean.returncode
    assert runlab.read_status(lab)["report"]["built"], "the report must be rebuilt"
    # 2. a kill while figures are being written
    figures = lab.root / "reports"
    for path in figures.rglob("*"):
        if path.is_file():
            path.unlink()
    proc = runlab.start(lab, "nightly", "--settle-seconds", "0")
    assert runlab.wait_for(
        lambda: any(p.suffix == ".svg" for p in figures.rglob("*")) or proc.poll() is not None,
        timeout=120,
    )
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    final = runlab.nightly(lab)
    assert final.returncode == clean.returncode
    assert runlab.state(lab) == runlab.state(ref)
    runlab.assert_sound(lab)
    assert next((lab.root / "reports").rglob("index.html")).stat().st_size > 0
