"""``ingest --scheduler``: parsing on a Dask cluster gives byte-identical outputs.

The cluster tests need the optional ``distributed`` package (``pip install -e
".[distributed]"``) and skip without it (CI installs ``.[dev]`` only). The address checks
need nothing optional.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

import runlab
from labpipe.config import load_config
from labpipe.distributed import check_address
from labpipe.errors import ConfigError
from labpipe.ingest import ingest

from labfolder import Lab


@pytest.mark.parametrize(
    "address",
    [
        "tls://scheduler.example.org:8786",
        "tcp://127.0.0.1:8786",
        "tcp://localhost:8786",
        "tcp://[::1]:8786",
        "127.0.0.1:8786",
        "inproc://10.0.0.1/123/1",
    ],
)
def test_tls_and_local_addresses_are_accepted(address):
    assert "://" in check_address(address)


@pytest.mark.parametrize(
    "address",
    ["tcp://10.0.0.5:8786", "tcp://scheduler.example.org:8786", "10.1.2.3:8786", "udp://x:1"],
)
def test_plain_tcp_to_another_machine_is_refused_with_the_reason(address):
    with pytest.raises(ConfigError) as err:
        check_address(address)
    assert "pickle" in err.value.message
    assert "tls://" in err.value.message


def test_the_cli_refuses_a_remote_plain_tcp_scheduler_with_exit_2(tmp_path):
    from labpipe import demo

    demo.write_scaled_lab(tmp_path / "lab", n_files=3, seed=1)
    done = runlab.run(Lab(tmp_path / "lab"), "ingest", "--scheduler", "tcp://192.0.2.7:8786")
    assert done.returncode == 2
    assert "TLS" in done.stderr + done.stdout
    assert not (tmp_path / "lab" / "data" / "processed" / "catalog.sqlite").exists()


# ---- on a real (local, multi-process) cluster -------------------------------------------

try:
    import distributed
except ImportError:  # CI installs .[dev] only
    distributed = None

needs_distributed = pytest.mark.skipif(
    distributed is None,
    reason="the optional 'distributed' extra is not installed (pip install -e '.[distributed]')",
)


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None
    ) as c:
        yield c


def _lab(root: Path, n_files: int) -> Lab:
    from labpipe import demo

    demo.write_scaled_lab(root, n_files=n_files, seed=5)
    raw = root / "data" / "raw"
    first = sorted(p for p in raw.rglob("*") if p.is_file())[0]
    # A copy of a file under another name (a duplicate file) and the same session in a
    # later folder (a duplicate session in another chunk): the committer decides them.
    shutil.copyfile(first, raw / "K0001" / "zz copy")
    (raw / "ZZZ").mkdir()
    shutil.copyfile(first, raw / "ZZZ" / "again")
    return Lab(root)


def _outputs(lab: Lab) -> dict[str, str]:
    return {k: v[1] for k, v in lab.outputs().items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    lab = _lab(tmp_path_factory.mktemp("local") / "lab", 700)
    ingest(load_config(lab.config), workers=1)
    return lab


@needs_distributed
def test_a_cluster_run_is_byte_identical_to_a_local_run(cluster, reference, tmp_path):
    lab = _lab(tmp_path / "lab", 700)
    summary = ingest(load_config(lab.config), scheduler=cluster.scheduler_address)
    assert summary.files_read == 702
    assert summary.duplicates
    assert _outputs(lab) == _outputs(reference)
    assert lab.catalog_rows() == reference.catalog_rows()
    runlab.assert_sound(lab)


@needs_distributed
def test_a_worker_killed_mid_run_changes_nothing(cluster, reference, tmp_path):
    lab = _lab(tmp_path / "lab", 700)
    with distributed.Client(cluster.scheduler_address) as client:
        pids = list(client.run(os.getpid).values())
    staging = lab.processed / ".staging"
    killed: list[int] = []

    def kill_when_a_chunk_is_staged() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if staging.exists() and any(staging.rglob("*.parquet")):
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                return
            time.sleep(0.002)

    killer = threading.Thread(target=kill_when_a_chunk_is_staged)
    killer.start()
    summary = ingest(load_config(lab.config), scheduler=cluster.scheduler_address)
    killer.join()
    assert killed, "no worker was killed"
    assert summary.files_read == 702
    assert _outputs(lab) == _outputs(reference)
    assert lab.catalog_rows() == reference.catalog_rows()
    runlab.assert_sound(lab)
