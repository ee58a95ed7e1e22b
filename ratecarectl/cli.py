"""ratecarectl: talk to ratecared over its control socket.

Exit codes: 0 ok, 1 the daemon reported a failure (and `status --check`:
a breaker is not closed), 2 usage, 3 daemon unreachable, 4 permission denied,
130 interrupted by Ctrl-C (a run waited on carries on).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
import threading
from typing import Any, Callable, NoReturn

import click

from ratecared import __version__, duration
from ratecared.client import (DEFAULT_SOCKET, Client, ClientError, ConnectionDropped, DaemonBusy, DaemonError,
                              DaemonUnreachable, PermissionDenied)

EXIT_FAILURE, EXIT_UNREACHABLE, EXIT_DENIED, EXIT_INTERRUPTED = 1, 3, 4, 130

STATE_COLOURS = {"closed": "green", "open": "red", "half_open": "yellow"}

ROWS_HELP = (
    "ROWS is what a run changed: for aggregate_statistics the summary rows and widget daily rows it wrote "
    "plus the detail rows it deleted; for cleanup_expired_cache the expired cache rows deleted; for warm_cache the "
    "widgets warmed."
)


# Set on the root context by --json: errors then come as JSON too.
JSON_KEY = "ratecarectl.json"


def _fail(message: str, code: int, error: str = "failed") -> NoReturn:
    """Say why and exit `code`: on stderr for people, or under --json as the daemon's error envelope on stdout."""
    if click.get_current_context().find_root().meta.get(JSON_KEY):
        click.echo(json.dumps({"status": "error", "error": {"code": error, "message": message}}, indent=2))
    else:
        click.echo(f"ratecarectl: {message}", err=True)
    sys.exit(code)


def _call(ctx: click.Context, action: Callable[[Client], Any], when_dropped: str | None = None) -> Any:
    """Run `action`, turning the client's errors into a message and an exit code.

    `when_dropped` replaces the unreachable message when the daemon closed the
    connection after it had the request (it was reached, the outcome is unknown).
    """
    client: Client = ctx.obj
    try:
        return action(client)
    except PermissionDenied as exc:
        _fail(str(exc), EXIT_DENIED, "permission_denied")
    except DaemonBusy as exc:
        # It is running and answered: a failure to retry, not "is ratecared running?".
        _fail(str(exc), EXIT_FAILURE, "busy")
    except DaemonUnreachable as exc:
        if when_dropped and isinstance(exc, ConnectionDropped):
            _fail(when_dropped, EXIT_FAILURE, "connection_dropped")
        # systemd runs only the package's daemon; any other socket is a daemon of one's own.
        hint = "; systemctl status ratecared" if client.socket_path == DEFAULT_SOCKET else ""
        _fail(f"{exc} (is ratecared running?{hint})", EXIT_UNREACHABLE, "unreachable")
    except DaemonError as exc:
        _fail(exc.message, EXIT_FAILURE, exc.code)
    finally:
        client.close()



def _json_wanted(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """--json, remembered on the root context so that errors, wherever raised, come as JSON too."""
    if value:
        ctx.find_root().meta[JSON_KEY] = True
    return value


def json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """The --json every command takes."""
    return click.option("--json", "as_json", is_flag=True, callback=_json_wanted, is_eager=True,
                        help="Print JSON for programs: the daemon's answer, or its error envelope.")(command)


def _table(rows: list[list[str]], colour: Callable[[int, str], str | None] = lambda col, text: None) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        cells = []
        for i, text in enumerate(row):
            padded = text.ljust(widths[i])
            fg = colour(i, text) if n else None
            cells.append(click.style(padded, fg=fg, bold=True if fg == "red" else None) if fg else padded)
        click.echo("  ".join(cells).rstrip())


def _cut(text: str, width: int) -> str:
    """`text` in at most `width` characters: cut short with an ellipsis."""
    return text if len(text) <= width else text[:width - 1] + "…"


def _fit_reason(rows: list[list[str]]) -> list[list[str]]:
    """A table whose last column, REASON, is cut to what the others leave of TABLE_WIDTH."""
    room = TABLE_WIDTH - sum(max(len(row[i]) for row in rows) + 2 for i in range(len(rows[0]) - 1))
    return [row[:-1] + [_cut(row[-1], max(room, len("REASON")))] for row in rows]


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    value = float(value)
    if value >= 3600:
        return f"{value / 3600:.1f}h"
    if value >= 60:
        return f"{int(value // 60)}m{int(value % 60):02d}s"
    return f"{value:.1f}s"


def _job_names() -> list[str]:
    """The jobs, from the daemon's own table; imported late, since the job modules
    load requests and the database drivers, which every other command can do without."""
    from ratecared.jobs import JOBS

    return list(JOBS)


def _complete_job(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    return [name for name in _job_names() if name.startswith(incomplete)]


def _complete_setting(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """The setting keys, from the daemon's own table of them (imported late, as the jobs are)."""
    from ratecared.settings import KEYS

    return [key for key in KEYS if key.startswith(incomplete)]


def _complete_platform(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """The daemon's platforms, when it answers within a second (completion must not hang); none otherwise."""
    path = ctx.find_root().params.get("socket_path") or DEFAULT_SOCKET
    try:
        with Client(path, timeout=1.0) as client:
            names = [p["platform"] for p in client.status()["platforms"]]
    except ClientError:
        return []
    return [name for name in names if name.startswith(incomplete)]


class _JobCommand(click.Command):
    """A command on one JOB: its help ends with the names of the jobs."""

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_help_text(ctx, formatter)
        formatter.write_paragraph()
        with formatter.indentation():
            formatter.write_text(f"JOB is one of: {', '.join(_job_names())}.")


def _not_empty(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not value:
        raise click.BadParameter("must be a path, not empty")
    return value


@click.group()
@click.version_option(__version__, prog_name="ratecarectl", message="%(prog)s %(version)s")
@click.option("--socket", "socket_path", envvar="RATECARE_SOCKET", default=DEFAULT_SOCKET, callback=_not_empty,
              show_default=True, help="Control socket [env RATECARE_SOCKET].")
@click.option("--timeout", default=5.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds to wait for the daemon; jobs, history and health wait at least 10, reload 30, "
                   "run --wait until the run ends.")
@click.pass_context
def main(ctx: click.Context, socket_path: str, timeout: float) -> None:
    """Inspect and control the ratecared daemon.

    Colours only on a terminal, and not when NO_COLOR is set (no-color.org).
    """
    if os.environ.get("NO_COLOR"):
        ctx.color = False
    ctx.obj = Client(socket_path, timeout=timeout)


@main.command()
@click.argument("platform", required=False, shell_complete=_complete_platform)
@json_option
@click.option("--check", is_flag=True,
              help="Exit 0 only when every breaker shown is closed (or has no breaker), 1 otherwise: for scripts.")
@click.option("--wide", is_flag=True, help="Every column, and reasons in full (the table fits 80 columns without).")
@click.option("--cluster", is_flag=True,
              help="Every host on this database, from their snapshots: stale hosts marked, a line per platform.")
@click.pass_context
def status(ctx: click.Context, platform: str | None, as_json: bool, check: bool, wide: bool, cluster: bool) -> None:
    """Circuit breaker state of every platform, or of one."""
    if cluster:
        _cluster_status(ctx, platform, as_json, check)
        return
    data = _call(ctx, lambda c: c.status())
    platforms = data["platforms"]
    if platform is not None:
        platforms = [p for p in platforms if p["platform"] == platform]
        if not platforms:
            _fail(f"unknown platform {platform!r}", EXIT_FAILURE, "unknown_platform")
    all_closed = all(p["state"] == "closed" or not p.get("guarded", True) for p in platforms)
    if as_json:
        click.echo(json.dumps(platforms[0] if platform else data, indent=2))
    else:
        _status_table(data, platforms, platform is None, wide)
    if check and not all_closed:
        sys.exit(EXIT_FAILURE)


def _cluster_status(ctx: click.Context, platform: str | None, as_json: bool, check: bool) -> None:
    data = _call(ctx, lambda c: c.cluster_status())
    if platform is not None:
        data["platforms"] = [p for p in data["platforms"] if p["platform"] == platform]
        if not data["platforms"]:
            _fail(f"unknown platform {platform!r}", EXIT_FAILURE, "unknown_platform")
        for host in data["hosts"]:
            host["breakers"] = [b for b in host["breakers"] if b["platform"] == platform]
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        rows = [["HOST", "PLATFORM", "STATE", "RETRY IN", "BACKOFF", "SNAPSHOT"]]
        for host in data["hosts"]:
            age = "live (this host)" if host["this_host"] else f"{_seconds(host['age_seconds'])} ago"
            if host["stale"]:
                age = f"STALE, {age}"
            for breaker in host["breakers"]:
                state = breaker["state"] + (f" (held {breaker['hold']['state']})" if breaker["hold"] else "")
                rows.append([host["host"], breaker["platform"], state, _seconds(breaker["retry_after"]),
                             str(breaker["backoff_level"]), age])
        _table(rows, lambda col, text: STATE_COLOURS.get(text.split(" ")[0]) if col == 2 else None)
        click.echo("")
        for line in data["platforms"]:
            click.echo(line["summary"])
        stale = [host["host"] for host in data["hosts"] if host["stale"]]
        if stale:
            click.echo(f"stale (no snapshot for over {data['stale_after_seconds']:g} s: stopped, or cut off from "
                       f"the database): {', '.join(stale)}")
    if check and any(line["open"] or line["half_open"] for line in data["platforms"]):
        sys.exit(EXIT_FAILURE)


def _cluster_sent(answer: dict[str, Any]) -> str:
    command = answer["command"]
    what = command["action"] + (f" {command['platform']}" if command["platform"] else " of every breaker")
    return (f"{what}: sent to every host as cluster command {command['id']}; here ({command['host']}): "
            f"{answer['applied_here']}.\nThe other hosts apply it within their settings_refresh; "
            "`ratecarectl status --cluster` shows them.")


_CLUSTER_DROPPED = ("ratecared closed the connection before answering; the command may or may not have been "
                    "recorded: see `ratecarectl events`")
cluster_option = click.option("--cluster", is_flag=True,
                              help="Every host on this database: a command each daemon applies within its "
                                   "settings_refresh, and acknowledges.")


# The status table without --wide: these columns, and REASON cut to what is left of TABLE_WIDTH.
NARROW = ("PLATFORM", "STATE", "FAILURES", "SUCCESS", "RETRY IN", "SINCE", "REASON")
TABLE_WIDTH = 80


def _status_table(data: dict[str, Any], platforms: list[dict[str, Any]], totals: bool, wide: bool) -> None:
    rows = [["PLATFORM", "STATE", "FAILURES", "SUCCESS", "REQUESTS", "REJECTED", "TIMEOUTS", "LIMITED", "SLOW",
             "IGNORED", "BACKOFF", "RETRY IN", "SINCE", "REASON"]]
    for p in platforms:
        state = p["state"] if p.get("guarded", True) else "unguarded"
        # A hold is in REASON ("held open by …") and on its own line below.
        if not p.get("enabled", True):
            state += " (disabled)"
        rate = "-" if p["success_rate"] is None else f"{p['success_rate']:.1f}%"
        outcomes = p.get("outcomes", {})
        rows.append([
            p["platform"], state, str(p["failure_count"]), rate, str(p.get("total_requests", 0)),
            str(p.get("rejected", 0)),
            *(str(outcomes.get(kind, 0)) for kind in ("timeout", "rate_limited", "slow", "ignored")),
            str(p.get("backoff_level", 0)), _seconds(p.get("retry_after")), _seconds(p.get("seconds_in_state")),
            p.get("last_reason", ""),
        ])
    if not wide:
        keep = [rows[0].index(name) for name in NARROW]
        rows = [[row[i] for i in keep] for row in rows]
        rows = _fit_reason(rows)
    _table(rows, lambda col, text: STATE_COLOURS.get(text.split(" ")[0]) if col == 1 else None)
    held = [p for p in platforms if p.get("hold")]
    # Level 1 is one trip: its open time is the plain timeout, nothing to point out.
    backing_off = [p for p in platforms if p.get("backoff_level", 0) > 1]
    if held or backing_off:
        click.echo("")
    for p in held:
        click.echo(_hold_line(p))
    for p in backing_off:
        level = p["backoff_level"]
        click.echo(f"{p['platform']}: back-off level {level}, {level} trips in a row not yet worn off")
    if totals:
        click.echo(
            f"\n{data['total_platforms']} platforms: {data['closed']} closed, {data['open']} open, "
            f"{data['half_open']} half-open; {data['total_requests']} calls, {data['total_failures']} failed"
        )


@main.command()
@click.argument("platform", required=False, shell_complete=_complete_platform)
@json_option
@cluster_option
@click.pass_context
def reset(ctx: click.Context, platform: str | None, as_json: bool, cluster: bool) -> None:
    """Close one platform's breaker, or every breaker."""
    if cluster:
        answer = _call(ctx, lambda c: c.cluster("reset", platform), when_dropped=_CLUSTER_DROPPED)
        click.echo(json.dumps(answer, indent=2) if as_json else _cluster_sent(answer))
        return
    outcome = _call(ctx, lambda c: c.reset_outcome(platform),
                    when_dropped="ratecared closed the connection before answering; the reset may or may"
                                 " not have been done: see `ratecarectl status`")
    if as_json:
        click.echo(json.dumps(outcome, indent=2))
        return
    changed, held = outcome["changed"], outcome["held"]
    closed = [name for name in outcome["reset"] if name not in changed and name not in held]
    if changed:
        click.echo(f"reset: {', '.join(changed)}" + (f"; already closed: {', '.join(closed)}" if closed else ""))
    elif not held:
        click.echo(f"{platform}: already closed; nothing to reset" if platform
                   else "every breaker was already closed; nothing to reset")
    if held:
        click.echo(f"held, left as they are (`ratecarectl release` ends a hold): {', '.join(held)}")


def _hold_line(entry: dict[str, Any]) -> str:
    """A hold as people read it, in 80 columns: who and until when, then why."""
    hold = entry["hold"]
    head = (f"{entry['platform']}: held {hold['state']} until {_when(hold['until'], seconds=True)} "
            f"({_seconds(hold['seconds_left'])} left) by {hold['by']}")
    return "\n".join(textwrap.wrap(head, TABLE_WIDTH, subsequent_indent="  ")
                     + textwrap.wrap(hold["reason"], TABLE_WIDTH, initial_indent="  ", subsequent_indent="  "))


def _length(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        return duration.seconds(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command()
@click.argument("platform", shell_complete=_complete_platform)
@click.argument("state", type=click.Choice(["open", "closed"]))
@click.option("--for", "seconds", required=True, callback=_length, metavar="DURATION",
              help="How long: 90s, 30m, 2h, 1d, 1h30m (at most 30d).")
@click.option("--reason", required=True, callback=_not_empty, help="Why, for status and the events.")
@json_option
@cluster_option
@click.pass_context
def hold(ctx: click.Context, platform: str, state: str, seconds: float, reason: str, as_json: bool,
         cluster: bool) -> None:
    """Hold a breaker open or closed for a while.

    Open refuses every call, closed allows every call and nothing trips it. The hold ends by itself when its time is up, or with `release`; the breaker
    then goes on from closed. Holds survive restarts.
    """
    if cluster:
        answer = _call(ctx, lambda c: c.cluster("hold", platform, state=state, seconds=seconds, reason=reason),
                       when_dropped=_CLUSTER_DROPPED)
        click.echo(json.dumps(answer, indent=2) if as_json else _cluster_sent(answer))
        return
    entry = _call(ctx, lambda c: c.hold(platform, state, seconds, reason),
                  when_dropped="ratecared closed the connection before answering; the hold may or may not have"
                               " been set: see `ratecarectl status`")
    click.echo(json.dumps(entry, indent=2) if as_json else _hold_line(entry))


@main.command()
@click.argument("platform", shell_complete=_complete_platform)
@json_option
@cluster_option
@click.pass_context
def release(ctx: click.Context, platform: str, as_json: bool, cluster: bool) -> None:
    """End a breaker's hold now.

    The breaker goes on from closed.
    """
    if cluster:
        answer = _call(ctx, lambda c: c.cluster("release", platform), when_dropped=_CLUSTER_DROPPED)
        click.echo(json.dumps(answer, indent=2) if as_json else _cluster_sent(answer))
        return
    entry = _call(ctx, lambda c: c.release(platform),
                  when_dropped="ratecared closed the connection before answering; the hold may or may not have"
                               " been released: see `ratecarectl status`")
    click.echo(json.dumps(entry, indent=2) if as_json else f"{platform}: hold released; now {entry['state']}")


@main.command()
@click.argument("platform", required=False, shell_complete=_complete_platform)
@click.option("--since", default="1d", show_default=True, metavar="WHEN",
              help="A length back from now (2h, 7d) or a time (2026-12-01T09:00, the daemon's zone).")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1, max=1000),
              help="At most this many, newest first.")
@json_option
@click.pass_context
def events(ctx: click.Context, platform: str | None, since: str, limit: int, as_json: bool) -> None:
    """Breaker transitions and operator actions.

    Resets, holds, releases and settings changes, newest first, with who.
    """
    rows = _call(ctx, lambda c: c.events(platform, since, limit))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no events since {since}" + (f" for {platform}" if platform else ""))
        return
    table = [["TIME", "PLATFORM", "ACTION", "CHANGE", "WHO", "REASON"]]
    for e in rows:
        change = f"{e['old_state']}>{e['new_state']}" if e["old_state"] != e["new_state"] else (e["new_state"] or "-")
        table.append([_when(e["at"], seconds=True), e["platform"] or "-", e["action"], change,
                      e["who"], e["reason"]])
    table = _fit_reason(table)
    _table(table, lambda col, text: STATE_COLOURS.get(text.split(">")[-1]) if col == 3 else None)


@main.command()
@json_option
@click.pass_context
def health(ctx: click.Context, as_json: bool) -> None:
    """Daemon up, database and journal writable? Exits 1 when not."""
    data = _call(ctx, lambda c: c.health())
    db = data["database"]
    # A daemon older than the journal's health reports none.
    journal = data.get("journal") or {"writable": True}
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(f"daemon    up {_seconds(data['uptime_seconds'])}, version {data['version']}, pid {data['pid']}")
        if not db["reachable"]:
            reach = click.style("UNREACHABLE", fg="red")
        elif not db["writable"]:
            reach = click.style("READ-ONLY", fg="red")
        else:
            reach = click.style("reachable, writable", fg="green")
        click.echo(f"database  {db['url']} {reach} ({db['latency_ms']} ms)")
        if db["error"]:
            click.echo(f"          error: {db['error']}")
        if db.get("notice"):
            click.echo(click.style(f"          {db['notice']}", fg="yellow"))
        if db.get("snapshot_error"):
            click.echo(f"          snapshots failing: {db['snapshot_error']}")
        written = _when(db["last_snapshot_at"], seconds=True) if db["last_snapshot_at"] else "never"
        zone = f" ({data['timezone']})" if db["last_snapshot_at"] and "timezone" in data else ""
        click.echo(f"snapshot  last written {written}{zone}")
        if "path" in journal:
            state = (click.style("writable", fg="green") if journal["writable"]
                     else click.style("WRITE FAILED", fg="red"))
            click.echo(f"journal   {journal['path']} {state}")
            if journal["error"]:
                click.echo(f"          error: {journal['error']}; transitions are durable only once a snapshot "
                           "is written")
        click.echo(f"breakers  {data['status']}")
        for warning in data.get("setting_warnings", []):
            click.echo(click.style(f"warning   {warning}", fg="yellow"))
    if not (db["reachable"] and db["writable"] and journal["writable"]):
        sys.exit(EXIT_FAILURE)


@main.command()
@json_option
@click.pass_context
def reload(ctx: click.Context, as_json: bool) -> None:
    """Re-read the config and the settings table, reopen the log files."""
    data = _call(ctx, lambda c: c.reload())
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    applied = data.get("applied") or []
    click.echo(f"reloaded: applied {', '.join(applied)}" if applied else "reloaded: the config file is unchanged")
    for warning in data.get("setting_warnings", []):
        click.echo(f"warning: {warning}", err=True)
    if data.get("restart_needed_for"):
        click.echo(f"restart needed to apply: {', '.join(data['restart_needed_for'])}", err=True)


RESULT_COLOURS = {"success": "green", "failed": "red", "interrupted": "yellow", "skipped": None, "running": "cyan",
                  "queued": "cyan"}


def _when(iso: str | None, seconds: bool = False) -> str:
    """A local ISO time as a table shows it: to the minute, or to the second."""
    return iso[:19 if seconds else 16].replace("T", " ") if iso else "-"


def _detail(value: Any) -> str:
    """A run's detail as people read it: a list as "a, b" or "first … last (n)", never Python's repr."""
    if not isinstance(value, list):
        return str(value)
    if not value:
        return "none"
    if len(value) > 4:
        return f"{value[0]} … {value[-1]} ({len(value)})"
    return ", ".join(str(item) for item in value)


@main.command(help="Schedule, next and last run of each job.\n\nTimes are the daemon's local time.\n\n" + ROWS_HELP)
@json_option
@click.pass_context
def jobs(ctx: click.Context, as_json: bool) -> None:
    data = _call(ctx, lambda c: c.jobs())
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    rows = [["JOB", "SCHEDULE", "NEXT RUN", "LAST RUN", "RESULT", "DURATION", "ROWS"]]
    notes = []
    for job in data:
        # LAST RUN and its figures are one run's: the one under way (rows so far), else the latest finished.
        # A queued run has no figures yet; it is the next run.
        last = job["last_run"] or {}
        next_run = "queued" if job.get("queued_run_id") else "disabled" if job.get("disabled") else _when(
            job["next_run"])
        result = "running" if job["running"] else last.get("status", "-")
        rows.append([job["name"], job["schedule"], next_run, _when(last.get("started_at")), result,
                     _seconds(last.get("duration_seconds")), str(last.get("rows", "-"))])
        if job.get("disabled"):
            notes.append(f"{job['name']}: disabled ({job['disabled']}): its scheduled runs, next at "
                         f"{_when(job['next_run'])}, are skipped")
        elif job["next_run_note"]:
            notes.append(f"{job['name']}: {job['next_run_note']}")
    _table(rows, lambda col, text: RESULT_COLOURS.get(text) if col == 4 else None)
    if data:
        click.echo(f"\ntimes in {data[0]['timezone']}")
    for note in notes:
        click.echo(click.style(f"note: {note}", fg="yellow"))


@main.command(cls=_JobCommand)
@click.argument("job", shell_complete=_complete_job)
@click.option("--wait", is_flag=True,
              help="Wait for the end; exit 0 when the run succeeded or was skipped (job disabled), 1 when it "
                   "failed, was interrupted or never started.")
@click.option("--follow", is_flag=True,
              help="Show the run's progress while it goes (rows, chunks, rate, elapsed, time left where known), "
                   "then its result; exits as --wait does.")
@json_option
@click.pass_context
def run(ctx: click.Context, job: str, wait: bool, follow: bool, as_json: bool) -> None:
    """Run a job now, through the same claim and lock as the schedule.

    With --wait, print the run's result and exit 0 when the run succeeded or
    was skipped (the job is disabled in the settings), 1 when it failed, was
    interrupted or never started (the daemon stopped first). --follow shows
    the progress meanwhile: a line that updates on a terminal, a line every
    few seconds when piped. With --json only the result is printed.
    """
    wait = wait and not follow
    dropped = (f"ratecared closed the connection while waiting for {job} to finish" if wait else
               f"ratecared closed the connection before answering; {job} may or may not have been queued")
    socket_path = ctx.obj.socket_path
    run_id = None
    try:
        if follow:
            result = _follow(ctx, job, show=not as_json)
        else:
            result = _call(ctx, lambda c: c.run_job(job, wait),
                           when_dropped=f"{dropped}: see `ratecarectl history {job}`")
    except KeyboardInterrupt:
        # Only the waiting stops: the daemon carries on with the run.
        run_id = run_id or _run_under_way(socket_path, job)
        which = f"run {run_id} of {job}" if run_id else f"the run of {job}"
        _fail(f"interrupted: {which} goes on in ratecared; see `ratecarectl history {job}`", EXIT_INTERRUPTED,
              "interrupted")
    if as_json:
        click.echo(json.dumps(result, indent=2))
    elif not (wait or follow):
        queued = "already queued" if result.get("already_queued") else "queued"
        click.echo(f"{job}: {queued} as run {result['run_id']}; see `ratecarectl history {job}`")
    else:
        _print_run(job, result)
    # A skip with an error is a run that never started (the daemon stopped first), not a disabled job.
    if (wait or follow) and (result["status"] not in ("success", "skipped") or result.get("error")):
        sys.exit(EXIT_FAILURE)


# How often --follow asks for the run's progress: on a terminal the line updates; piped, each is a line.
FOLLOW_TTY_EVERY, FOLLOW_PIPED_EVERY = 0.5, 2.0


def _follow(ctx: click.Context, job: str, show: bool) -> dict[str, Any]:
    """Run the job as `run --wait` does, showing its progress meanwhile; the run's record, as --wait answers it.

    The waiting request has a connection of its own, so its answer is the run's
    end whatever happens to it (a claim the database refused included); the
    progress is asked for on another.
    """
    tty = sys.stdout.isatty()
    waiting: dict[str, Any] = {}

    def wait() -> None:
        try:
            with Client(ctx.obj.socket_path, timeout=ctx.obj.timeout) as client:
                waiting["run"] = client.run_job(job, wait=True)
        except ClientError as exc:
            waiting["error"] = exc

    waiter = threading.Thread(target=wait, name="run-wait", daemon=True)
    waiter.start()
    shown = False
    while waiter.is_alive():
        if show:
            try:
                line = _progress_line(job, ctx.obj.jobs(), ctx.obj.job_runs(job, 1))
            except ClientError as exc:
                # The run goes on, and the waiting request still says how it ends.
                line = f"{job}: no progress to show now: {exc}"
            if tty:
                click.echo("\r" + _cut(line, shutil.get_terminal_size().columns - 1) + "\x1b[K", nl=False)
            else:
                click.echo(line)
            shown = True
        waiter.join(FOLLOW_TTY_EVERY if tty else FOLLOW_PIPED_EVERY)
    if shown and tty:
        click.echo()
    if "error" in waiting:
        def waited(client: Client) -> dict[str, Any]:
            raise waiting["error"]

        # Through _call, for the message and exit code every other command gives.
        return _call(ctx, waited, when_dropped=f"ratecared closed the connection while waiting for {job} to "
                                               f"finish: see `ratecarectl history {job}`")
    return waiting["run"]


def _progress_line(job: str, jobs: list[dict[str, Any]], newest: list[dict[str, Any]]) -> str:
    """The job's run as --follow shows it: queued, or the job's running run with its progress."""
    entry = next((j for j in jobs if j["name"] == job), {})
    run = newest[0] if newest and newest[0]["status"] == "running" else None
    if entry.get("queued_run_id"):
        return f"{job}: run {entry['queued_run_id']} queued"
    if run is None:
        return f"{job}: queued"
    run_id = run["run_id"]
    progress = run.get("progress") or {}
    parts = [f"{run['rows']} rows"]
    if progress.get("chunks") is not None:
        parts.append(f"{progress['chunks']} chunks")
    if progress.get("rows_per_second") is not None:
        parts.append(f"{progress['rows_per_second']:g} rows/s")
    if progress.get("elapsed_seconds") is not None:
        parts.append(f"{_seconds(progress['elapsed_seconds'])} elapsed")
    if progress.get("remaining_seconds") is not None:
        parts.append(f"about {_seconds(progress['remaining_seconds'])} left")
    return f"{job}: run {run_id} running: {', '.join(parts)}"


@main.command(cls=_JobCommand)
@click.argument("job", shell_complete=_complete_job)
@json_option
@click.pass_context
def cancel(ctx: click.Context, job: str, as_json: bool) -> None:
    """Stop a job's running run, or drop its queued one.

    The running run stops at its next chunk; with none running, the job's
    queued manual run is dropped. Root and the admin group only. The stopped run is recorded interrupted,
    the dropped one skipped, each with who cancelled it; the daemon and the
    other jobs go on. Exits 1 when the job has nothing running or queued.
    """
    data = _call(ctx, lambda c: c.cancel_job(job),
                 when_dropped="ratecared closed the connection before answering; the run may or may not have been "
                              f"cancelled: see `ratecarectl history {job}`")
    if as_json:
        click.echo(json.dumps(data, indent=2))
    elif data["cancelled"] == "running":
        click.echo(f"{job}: run {data['run_id']} stops at its next chunk; see `ratecarectl history {job}`")
    else:
        click.echo(f"{job}: queued run {data['run_id']} dropped")


def _setting_text(value: Any) -> str:
    """A setting's value as the table spells it: 1/0, whole numbers, `all`."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "-" if value is None else str(value)


@main.command()
@click.argument("key", required=False, shell_complete=_complete_setting)
@click.argument("value", required=False)
@json_option
@click.pass_context
def settings(ctx: click.Context, key: str | None, value: str | None, as_json: bool) -> None:
    """List the settings, show one, or set one.

    The list shows each setting's value in the settings table (- when it has
    no row), its default, the value in effect and any warning about it.
    Setting one needs root or the admin group: the value is checked as the
    daemon checks the table, written to it and in effect when this returns;
    a bad value is refused with the reason (exit 1) and the table is left as
    it was.
    """
    if key is not None and value is not None:
        entry = _call(ctx, lambda c: c.set_setting(key, value),
                      when_dropped="ratecared closed the connection before answering; the setting may or may not "
                                   "have been changed: see `ratecarectl settings`")
        if as_json:
            click.echo(json.dumps(entry, indent=2))
        else:
            click.echo(f"{key}: {_setting_text(entry['in_effect'])} in effect")
        return
    data = _call(ctx, lambda c: c.settings())
    if key is not None:
        known = [entry["key"] for entry in data]
        data = [entry for entry in data if entry["key"] == key]
        if not data:
            _fail(f"unknown setting {key!r}; settings: {', '.join(known)}", EXIT_FAILURE, "unknown_setting")
    if as_json:
        click.echo(json.dumps(data[0] if key else data, indent=2))
        return
    rows = [["KEY", "VALUE", "DEFAULT", "IN EFFECT"]]
    for entry in data:
        rows.append([entry["key"], _setting_text(entry["value"]), _setting_text(entry["default"]),
                     _setting_text(entry["in_effect"])])
    _table(rows)
    for entry in data:
        if entry["warning"]:
            click.echo(click.style(f"warning: {entry['warning']}", fg="yellow"))


def _run_under_way(socket_path: str, job: str) -> str | None:
    """The run id of the job's manual run queued or running now, if the daemon says within a second."""
    try:
        with Client(socket_path, timeout=1.0) as client:
            entry = next(j for j in client.request("GET", "/api/v1/jobs", timeout=1.0) if j["name"] == job)
    except (ClientError, StopIteration):
        return None
    if entry.get("queued_run_id"):
        return entry["queued_run_id"]
    return (entry["last_run"] or {}).get("run_id") if entry["running"] else None


def _print_run(job: str, result: dict[str, Any]) -> None:
    line = f"{job}: {result['status']} (run {result['run_id']}, {result['rows']} rows"
    duration = result.get("details", {}).get("duration_seconds")
    click.echo(line + (f", {_seconds(duration)})" if duration is not None else ")"))
    for key, value in result.get("details", {}).items():
        if key != "duration_seconds":
            click.echo(f"  {key}: {_detail(value)}")
    if result.get("error"):
        click.echo(f"  error: {result['error']}", err=True)


@main.command(cls=_JobCommand, help="Recent runs of a job, newest first.\n\n" + ROWS_HELP)
@click.argument("job", shell_complete=_complete_job)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1, max=1000),
              help="How many runs, newest first.")
@json_option
@click.pass_context
def history(ctx: click.Context, job: str, limit: int, as_json: bool) -> None:
    data = _call(ctx, lambda c: c.job_runs(job, limit))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    rows = [["STARTED", "TRIGGER", "SLOT", "RESULT", "DURATION", "ROWS", "HOST", "RUN", "ERROR"]]
    for r in data:
        rows.append([_when(r["started_at"], seconds=True), r["trigger"], _when(r["slot"]), r["status"],
                     _seconds(r["duration_seconds"]), str(r["rows"]), r["host"], r["run_id"], r["error"] or ""])
    if len(rows) == 1:
        click.echo(f"{job}: no runs yet")
        return
    _table(rows, lambda col, text: RESULT_COLOURS.get(text) if col == 3 else None)
    try:
        zone = ctx.obj.jobs()[0]["timezone"]
    except ClientError:
        return  # the table stands on its own; the footer is only a reminder
    finally:
        ctx.obj.close()
    click.echo(f"\ntimes in {zone}")
