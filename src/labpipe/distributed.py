"""``ingest --scheduler ADDRESS``: parse on a Dask distributed cluster.

The only module that imports ``distributed`` (an optional extra: ``pip install
"labpipe[distributed]"``). Each chunk of raw files is one task running
:func:`labpipe.worker.process_chunk` on a cluster worker: it reads the raw files, parses
and maps them and *stages* the chunk's parquet parts in ``data/processed/.staging``. The
task returns only small metadata; this process alone decides duplicates and conflicts,
commits to the catalog and publishes (research/reliability.md §5.3). A task the cluster
runs twice (a worker died mid-task) rewrites the same staged bytes under the same name,
so results are byte-identical to a local run.

Requirements of the cluster:

* Every worker sees ``data/raw`` and ``data/processed`` at the same paths as this
  process (a shared file system), and has the same labpipe version installed.
* The catalog (SQLite in WAL mode) is only ever written by this process, on its local
  disk.

Security: Dask sends tasks and results as pickles. Anyone who can reach a scheduler's
plain-TCP port can therefore run code on every worker and on this process. So only a
``tls://`` address (certificates from Dask's configuration: ``distributed.comm.tls.*``,
e.g. via ``DASK_DISTRIBUTED__COMM__TLS__...`` environment variables) or an address on this
machine's loopback interface (``tcp://127.0.0.1:8786``, ``tcp://localhost:8786``,
``inproc://...``) is accepted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence
from urllib.parse import urlsplit

from labpipe import worker
from labpipe.config import Experiment
from labpipe.errors import ConfigError

__all__ = ["check_address", "process_chunks"]

#: Host names that always mean this machine.
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_address(address: str) -> str:
    """Accept a TLS or a local scheduler address; refuse every other one.

    Parameters
    ----------
    address
        ``tls://host:port``, or ``tcp://127.0.0.1:port`` / ``tcp://localhost:port`` /
        ``tcp://[::1]:port``, or ``inproc://...``. A bare ``host:port`` means ``tcp://``.

    Returns
    -------
    str
        The address, with its scheme.

    Raises
    ------
    ConfigError
        For a plain-TCP (or other) address that is not on this machine.
    """
    text = address.strip()
    if "://" not in text:
        text = f"tcp://{text}"
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "tls" and parts.hostname:
        return text
    if scheme == "inproc":
        return text
    if scheme in ("tcp", "ws") and parts.hostname and _is_loopback(parts.hostname):
        return text
    raise ConfigError(
        f"--scheduler {address!r} is refused: labpipe only talks to a Dask scheduler over "
        "TLS (tls://...) or on this machine (tcp://127.0.0.1:PORT). Dask exchanges pickles, "
        "so anyone who can reach a plain-TCP scheduler port can run code on the cluster "
        "and on this computer.",
        hint="Start the scheduler and workers with TLS certificates (Dask's "
        "distributed.comm.tls settings) and pass its tls:// address.",
    )


def _client(address: str) -> object:
    try:
        from distributed import Client
    except ImportError as exc:  # the optional extra is not installed
        raise ConfigError(
            "--scheduler needs the Dask 'distributed' package, which is not installed.",
            hint='Install it with: pip install "labpipe[distributed]"',
        ) from exc
    try:
        return Client(address, timeout="30s", set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise ConfigError(
            f"cannot reach the Dask scheduler at {address} ({exc}).",
            hint="Is the scheduler running, and is the address right?",
        ) from exc


def process_chunks(
    address: str, cfg: Experiment, chunks: Sequence[list[worker.Item]]
) -> Iterator[worker.ChunkResult]:
    """Run :func:`labpipe.worker.process_chunk` for every chunk on a Dask cluster.

    Parameters
    ----------
    address
        The scheduler's address (checked with :func:`check_address`).
    cfg
        The experiment; sent to the workers once.
    chunks
        The chunks of raw files, in path order.

    Yields
    ------
    ChunkResult
        One per chunk, in the order of ``chunks`` (the committer decides in path order).

    Raises
    ------
    ConfigError
        A refused address, ``distributed`` not installed, or the scheduler unreachable.
    """
    address = check_address(address)
    client = _client(address)
    try:
        cfg_future = client.scatter(cfg, broadcast=True)  # type: ignore[attr-defined]
        processed = str(cfg.processed_dir)
        futures = [
            client.submit(  # type: ignore[attr-defined]
                worker.process_chunk,
                cfg_future,
                processed,
                chunk,
                key=f"labpipe-chunk-{i}-{chunk[0][1] if chunk else ''}",
                pure=False,
                retries=2,
            )
            for i, chunk in enumerate(chunks)
        ]
        for future in futures:
            yield future.result()
            future.release()
    finally:
        client.close()  # type: ignore[attr-defined]
