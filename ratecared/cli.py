"""The `ratecared` command: run the daemon, migrate, check the config.

Exit statuses: 0 ok, 1 failure, 69 database unreachable, 78 config error
(systemd's RestartPreventExitStatus=78 keeps a bad config from looping).
"""

from __future__ import annotations

import json
import os
import sys
from typing import NoReturn

import click

from ratecared import __version__
from ratecared.config import EX_CONFIG, Config, ConfigError, check_host, load
from ratecared.db import Database, DatabaseError, migrations

EX_UNAVAILABLE = 69


def _fail(message: str, code: int) -> NoReturn:
    # Under systemd, stderr is the journal: mark the line as an error (<3>).
    prefix = "<3>" if "JOURNAL_STREAM" in os.environ else ""
    click.echo(f"{prefix}ratecared: {message}", err=True)
    sys.exit(code)


def _load(path: str | None, on_this_host: bool = True) -> Config:
    try:
        config = load(path)
        if on_this_host:
            check_host(config)
        return config
    except ConfigError as exc:
        _fail(f"config error: {exc}", EX_CONFIG)


@click.group(invoke_without_command=True)
@click.option("--config", "config_path", envvar="RATECARED_CONFIG", type=click.Path(dir_okay=False),
              help="Config file [default: /etc/ratecared/ratecared.toml; env RATECARED_CONFIG].")
@click.version_option(__version__, prog_name="ratecared")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """Run the ratecared daemon in the foreground (as systemd does)."""
    ctx.obj = config_path
    if ctx.invoked_subcommand is None:
        from ratecared.daemon import run

        sys.exit(run(_load(config_path)))


@main.command()
@click.pass_obj
def migrate(config_path: str | None) -> None:
    """Apply pending database migrations."""
    config = _load(config_path, on_this_host=False)
    database = Database(config.database)
    try:
        applied = migrations.apply(database)
    except migrations.MigrationChanged as exc:
        _fail(f"migrate refused: {exc}", EX_CONFIG)
    except DatabaseError as exc:
        _fail(f"migrate failed: {exc}", EX_UNAVAILABLE if "connect" in str(exc) else 1)
    finally:
        database.close()
    if applied:
        for migration in applied:
            click.echo(f"applied {migration.version}_{migration.name}")
    else:
        click.echo("nothing to migrate: the database is up to date")


@main.command("check-config")
@click.pass_obj
def check_config(config_path: str | None) -> None:
    """Validate the config and print it as it takes effect, secrets masked."""
    config = _load(config_path)
    click.echo(f"# {config.path}: ok")
    click.echo(json.dumps(config.masked(), indent=2))


class _Said:
    """The purge throttle's log lines, as the partition command's own output."""

    def _say(self, event: str, **fields: object) -> None:
        click.echo(" ".join([event, *(f"{key}={value}" for key, value in fields.items())]))

    info = warning = _say


@main.command()
@click.option("--revert", is_flag=True, help="Go back to one unpartitioned table.")
@click.pass_obj
def partition(config_path: str | None, revert: bool) -> None:
    """Convert the live api_requests to day partitions (MySQL/MariaDB), or back with --revert.

    The new table is swapped in at once and the old rows are moved over in
    chunks; no write waits more than about a second. Stopped (Ctrl-C), it
    keeps every row; run it again to finish.
    """
    import signal
    import threading
    from datetime import datetime

    from ratecared.job_contract import ChunkPolicy
    from ratecared.jobs import day_partitions
    from ratecared.jobs.purge import PurgeInterrupted
    from ratecared.throttle import Throttle

    config = _load(config_path, on_this_host=False)
    if not config.database.url.startswith("mysql://"):
        _fail("partition: day partitions need MySQL or MariaDB; this config's database is SQLite", EX_CONFIG)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    job = config.jobs["aggregate_statistics"]
    database = Database(config.database)
    throttle = Throttle(database, config.database, stop, 30 * 86400, _Said())
    tz = config.daemon.tz
    try:
        done = day_partitions.convert(
            database, not revert, datetime.now(tz).date(), tz, stop,
            ChunkPolicy(target_seconds=job.chunk_seconds, pause_ratio=job.pause_ratio), click.echo, throttle)
    except PurgeInterrupted as exc:
        _fail(f"partition: stopped after moving {exc.stats.rows:,} rows; no row is lost: run it again to finish "
              "the move", 130)
    except day_partitions.PartitionError as exc:
        _fail(f"partition: {exc}", 130 if stop.is_set() else 1)
    except DatabaseError as exc:
        _fail(f"partition failed: {exc}", EX_UNAVAILABLE if "connect" in str(exc) else 1)
    finally:
        throttle.close()
        database.close()
    moved = f", {done.moved.rows:,} rows moved in {done.moved.seconds:.1f} s" if done.moved else ""
    if done.swapped:
        shape = f"partitioned by day ({done.partitions} partitions)" if done.partitioned else "one unpartitioned table"
        click.echo(f"api_requests is {shape}: swapped in {done.swap_seconds * 1000:.0f} ms{moved}")
    else:
        click.echo(f"api_requests is already {'partitioned by day' if done.partitioned else 'unpartitioned'}"
                   f"{moved}: nothing else to do")
