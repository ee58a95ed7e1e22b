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
