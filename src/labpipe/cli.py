"""The ``labpipe`` command line: parse options, call one library function, print.

This is the only module that imports click and the only place where errors become
messages and exit codes:

0 done; 1 done but some input was set aside; 2 usage or config error; 3 another run holds
the lock; 4 the machine failed us (disk full, permission denied); 5 a bug in labpipe (one
line on stderr, the traceback in the log).
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from labpipe import config as config_mod
from labpipe import ingest as ingest_mod
from labpipe import logs, medpc
from labpipe.errors import LabpipeError

logger = logging.getLogger("labpipe.cli")

_STATE: dict[str, Any] = {"log_file": None, "debug": False}

config_option = click.option(
    "--config",
    "-c",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("configs/experiment.toml"),
    show_default=True,
    help="The experiment config (its folder's parent is the lab folder).",
)


workers_option = click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Parsing processes (default: all cores).",
)


def settle_option(default: float) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Return the ``--settle-seconds`` option with a command's own default."""
    return click.option(
        "--settle-seconds",
        type=click.FloatRange(min=0),
        default=default,
        show_default=True,
        help="Leave files modified in the last S seconds pending (still being written).",
    )


def _load(config_path: Path) -> config_mod.Experiment:
    cfg = config_mod.load_config(config_path)
    _STATE["log_file"] = logs.configure(
        cfg.processed_dir / "logs", run_id=_STATE["run_id"], verbose=False
    )
    return cfg


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="labpipe")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def cli(debug: bool) -> None:
    """Turn MED-PC files from self-administration experiments into data and reports."""
    _STATE["debug"] = debug


@cli.command()
@click.argument("lab_dir", type=click.Path(path_type=Path, file_okay=False))
def init(lab_dir: Path) -> int:
    """Write a lab-folder skeleton with a commented example config into LAB_DIR."""
    written = config_mod.write_skeleton(lab_dir)
    for path in written:
        click.echo(f"wrote {path}")
    click.echo(
        f"Next: edit {lab_dir / 'configs'}, copy MED-PC files into "
        f"{lab_dir / 'data' / 'raw'}, then run `labpipe ingest` in {lab_dir}."
    )
    return 0


@cli.command()
@click.argument("lab_dir", type=click.Path(path_type=Path, file_okay=False))
@workers_option
def demo(lab_dir: Path, workers: int | None) -> int:
    """Write a synthetic 24-rat experiment into LAB_DIR and run the pipeline on it."""
    from labpipe import demo as demo_mod
    from labpipe import nightly as nightly_mod

    truth = demo_mod.write_demo(lab_dir)
    cfg = _load(lab_dir / "configs" / "experiment.toml")
    click.echo(
        f"Wrote a synthetic experiment: {len(truth.animals)} rats, "
        f"{len(truth.files)} raw files in {cfg.raw_dir}."
    )
    summary = nightly_mod.locked_ingest(
        cfg,
        workers=workers,
        settle_seconds=0.0,
        progress=_progress_bar("Ingesting"),
        run_id=_STATE["run_id"],
    )
    _print_summary(summary)
    click.echo("(The demo's raw files include designed defects: the set-aside items are expected.)")
    with nightly_mod.locked(cfg.processed_dir, command="demo", run_id=_STATE["run_id"]):
        outcome = nightly_mod.build_report_if_changed(cfg, force=True)
    click.echo(f"Wrote {outcome.files} report files to {cfg.reports_dir}.")
    click.echo(f"Report: {cfg.reports_dir / 'index.html'}")
    return 0


@cli.command()
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the sessions as JSON.")
def inspect(file: Path, as_json: bool) -> int:
    """Show what a raw MED-PC FILE holds: every session's header and every variable."""
    parsed = medpc.read_medpc(file)
    if as_json:
        click.echo(json.dumps(medpc.inspect_records(parsed), indent=1))
    else:
        click.echo(medpc.describe(parsed, str(file)))
    return 1 if parsed.problems else 0


@cli.command()
@config_option
@workers_option
@settle_option(0.0)
@click.option(
    "--scheduler",
    default=None,
    metavar="ADDRESS",
    help="Parse on a Dask distributed cluster: a tls:// address, or a local one "
    "(tcp://127.0.0.1:PORT). Needs labpipe[distributed]; see docs/scale.md.",
)
def ingest(
    config_path: Path, workers: int | None, settle_seconds: float, scheduler: str | None
) -> int:
    """Take every new raw file into data/processed (catalog and parquet datasets)."""
    from labpipe import nightly as nightly_mod

    if scheduler is not None:
        from labpipe.distributed import check_address

        scheduler = check_address(scheduler)
    cfg = _load(config_path)
    summary = nightly_mod.locked_ingest(
        cfg,
        workers=workers,
        scheduler=scheduler,
        settle_seconds=settle_seconds,
        progress=_progress_bar("Ingesting"),
        run_id=_STATE["run_id"],
    )
    _print_summary(summary)
    return summary.exit_code


@cli.command()
@config_option
def status(config_path: Path) -> int:
    """Show what is ingested and set aside, and where each animal is."""
    from labpipe import pipeline

    cfg = _load(config_path)
    st = ingest_mod.lab_status(cfg)
    files = ", ".join(f"{n} {k}" for k, n in sorted(st.files.items())) or "none"
    click.echo(f"Experiment {cfg.experiment}: {st.sessions} sessions stored; files: {files}.")
    _print_set_aside(st.set_aside)
    animals = st.animals
    if st.sessions:
        progress = pipeline.animal_progress(cfg)
        animals = animals.merge(
            progress[["subject", "acquisition_met", "extinction_met", "ready_for_test"]],
            on="subject",
            how="left",
        )
        animals["excluded"] = animals["subject"].map(
            progress.set_index("subject")["exclusion_reason"]
        )
        click.echo(f"Ready for a test: {pipeline.READY_RULE}.")
    click.echo("")
    click.echo(animals.to_string(index=False, na_rep="-"))
    return 1 if st.set_aside else 0


@cli.command()
@config_option
def report(config_path: Path) -> int:
    """Compute measures, criteria and statistics; write figures, tables and index.html."""
    from labpipe import nightly as nightly_mod

    cfg = _load(config_path)
    # The run lock keeps a report from reading a lab folder that a rebuild is swapping.
    # Recording what the report was built from spares the next nightly run a rebuild.
    with nightly_mod.locked(cfg.processed_dir, command="report", run_id=_STATE["run_id"]):
        outcome = nightly_mod.build_report_if_changed(cfg, force=True)
    index = cfg.reports_dir / "index.html"
    click.echo(f"Wrote {outcome.files} files to {cfg.reports_dir}.")
    click.echo(f"Report: {index}")
    return 0


@cli.command()
@config_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "xlsx", "parquet"]),
    default="csv",
    show_default=True,
    help="csv: one file per table; xlsx: one workbook (Prism-ready sheets); parquet.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder to write to (default: reports/<experiment>/export).",
)
def export(config_path: Path, fmt: str, out_dir: Path | None) -> int:
    """Write the tidy analysis tables for R, Prism or Python."""
    from labpipe import pipeline, report

    cfg = _load(config_path)
    analysis = pipeline.analyse(cfg)
    target = out_dir if out_dir is not None else cfg.reports_dir / "export"
    for path in report.export_tables(analysis.tables, fmt, target):
        click.echo(f"wrote {path}")
    return 0


@cli.command()
@config_option
@workers_option
@settle_option(120.0)
@click.option("--no-report", is_flag=True, help="Ingest only; do not rebuild the report.")
def nightly(config_path: Path, workers: int | None, settle_seconds: float, no_report: bool) -> int:
    """Locked ingest, then the report when anything changed; status.json; for cron."""
    from labpipe import nightly as nightly_mod

    cfg = _load(config_path)
    result = nightly_mod.nightly(
        cfg,
        workers=workers,
        settle_seconds=settle_seconds,
        progress=_progress_bar("Ingesting"),
        run_id=_STATE["run_id"],
        report=not no_report,
    )
    _print_summary(result.summary)
    rep = result.report
    click.echo(f"Report: {'rebuilt' if rep.built else 'not rebuilt'} ({rep.reason}).")
    click.echo(f"Status: {result.status_path}")
    return result.exit_code


@cli.command()
@config_option
def verify(config_path: Path) -> int:
    """Check every output part and the catalog against their checksums; name the damage."""
    from labpipe import nightly as nightly_mod

    cfg = _load(config_path)
    found = nightly_mod.verify(cfg, run_id=_STATE["run_id"])
    for note in found.notes:
        click.echo(f"  note     {note}")
    for damage in found.damaged:
        click.echo(f"  DAMAGED  {damage.path}: {damage.problem}")
    if found.damaged:
        click.echo(
            f"{len(found.damaged)} damaged file(s) in {cfg.processed_dir}. "
            "Run `labpipe rebuild` to re-derive them from data/raw."
        )
    else:
        click.echo(f"All {found.parts_checked} parts, sessions.parquet and the catalog are sound.")
    return found.exit_code


@cli.command()
@config_option
@workers_option
@settle_option(0.0)
def rebuild(config_path: Path, workers: int | None, settle_seconds: float) -> int:
    """Re-derive data/processed from data/raw beside the old state, then swap them."""
    from labpipe import nightly as nightly_mod

    cfg = _load(config_path)
    result = nightly_mod.rebuild(
        cfg,
        workers=workers,
        settle_seconds=settle_seconds,
        progress=_progress_bar("Rebuilding"),
        run_id=_STATE["run_id"],
    )
    _print_summary(result.summary)
    click.echo(f"Rebuilt {cfg.processed_dir} from {cfg.raw_dir}.")
    return result.exit_code


def _progress_bar(label: str) -> Callable[[int, int], None] | None:
    if not sys.stderr.isatty():
        return None
    state: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        bar = state.get("bar")
        if bar is None:
            if total == 0:
                return
            bar = click.progressbar(length=total, label=label, file=sys.stderr)
            bar.__enter__()
            state["bar"], state["done"] = bar, 0
        bar.update(done - state["done"])
        state["done"] = done
        if done >= total:
            bar.__exit__(None, None, None)
            state.pop("bar")

    return update


def _print_summary(s: ingest_mod.IngestSummary) -> None:
    if s.recovered:
        click.echo(
            f"Recovered from an interrupted run: {len(s.recovered)} item(s) finished or cleaned up."
        )
    if s.rederived:
        click.echo(f"Re-derived: {s.rederived}.")
    click.echo(
        f"{s.files_seen} raw files: {len(s.ingested)} ingested, {len(s.duplicates)} duplicate, "
        f"{len(s.set_aside)} set aside, {len(s.pending)} pending, "
        f"{s.files_seen - s.files_read - len(s.pending)} unchanged. "
        f"Sessions added: {s.sessions_added} (total {s.sessions_total})."
    )
    for path, of in s.duplicates:
        click.echo(f"  duplicate  {path}: same as {of}")
    for path in s.pending:
        click.echo(f"  pending    {path}: changed in the last seconds; will be read next run")
    _print_set_aside(s.still_set_aside)


def _print_set_aside(items: Sequence[ingest_mod.SetAsideItem]) -> None:
    if not items:
        return
    click.echo(f"Set aside ({len(items)}), fix and run `labpipe ingest` again:")
    for item in items:
        where = item.file if item.block is None else f"{item.file} [session {item.block + 1}]"
        click.echo(f"  {item.reason_code:<17} {where}: {item.reason}")


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line and exit with labpipe's exit codes."""
    _STATE["run_id"] = uuid.uuid4().hex[:12]
    # A log that cannot be written (disk full) must not print tracebacks on stderr.
    logging.raiseExceptions = False
    logs.configure(None, run_id=_STATE["run_id"])
    try:
        code = cli.main(args=list(argv) if argv is not None else None, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError | click.BadParameter) else exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except LabpipeError as exc:
        if _STATE["debug"]:
            raise
        logger.debug("error", exc_info=True)
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug: one line for the user, the traceback in the log
        if _STATE["debug"]:
            raise
        logger.error("internal error", exc_info=True, extra={"stderr": False})
        where = _STATE["log_file"]
        if where is None:
            where = _crash_file(traceback.format_exc())
        click.echo(
            f"labpipe hit a bug ({type(exc).__name__}: {exc}). The traceback is in {where}; "
            "please report it. Run with --debug to see it here.",
            err=True,
        )
        sys.exit(5)
    sys.exit(code if isinstance(code, int) else 0)


def _crash_file(text: str) -> str:
    import tempfile

    path = Path(tempfile.gettempdir()) / "labpipe-crash.log"
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(text + "\n")
    except OSError:
        return "(no writable place for the log)"
    return str(path)
