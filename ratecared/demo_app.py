"""A local stand-in for the web app's widget endpoint, for `make run` and bench/gains.py.

    python -m ratecared.demo_app --config examples/dev.toml -- ratecared --config examples/dev.toml

Serves `GET /api/v1/widgets/{id}/rates` on the host and port of the
configured warming URL, and runs the command after `--` (the daemon) as a
child. Ctrl-C reaches both; this process waits for the daemon to stop and
exits with its status.

It answers as the app does, from the configured database: each platform's
rates come from a fresh `cache` row (`rates:{widget}:{platform}`) when there
is one. The platforms without one are called together, as the app's
curl_multi does, which here is a wait of `--platform-ms` (by default 20-80 ms),
and their answers are stored for six hours. `X-Cache` says HIT when every
platform came from the cache. So warming fills the cache for real, and the
morning's first request shows what warming saved.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Sequence
from urllib.parse import urlsplit

import click

from ratecared.config import EX_CONFIG, ConfigError, load
from ratecared.db import Database, DatabaseError, timestamp
from ratecared.demo import CACHE_COLUMNS, cache_key, rates

_PATH = re.compile(r"^/api/v1/widgets/(\d+)/rates$")
CACHE_TTL = timedelta(hours=6)
# Threads that serve requests: each keeps its own database connection.
WORKERS = 8


class WidgetRates:
    """The app's read path for a widget's rates: the cache first, then the platforms."""

    def __init__(self, database: Database, platforms: Sequence[str], platform_ms: float | None) -> None:
        self.database = database
        self.platforms = tuple(platforms)
        self.platform_ms = platform_ms
        self._store = database.dialect.upsert("cache", CACHE_COLUMNS, ("cache_key",))

    def _platforms_answer(self) -> None:
        time.sleep(self.platform_ms / 1000 if self.platform_ms is not None else random.uniform(0.02, 0.08))

    def answer(self, widget_id: int) -> tuple[list[dict[str, Any]], bool]:
        """(the widget's rates, one entry per platform; whether all of them came from the cache)."""
        now = datetime.now(timezone.utc)
        keys = [cache_key(widget_id, platform) for platform in self.platforms]
        marks = ", ".join("?" for _ in keys)
        cached = {key: json.loads(payload) for key, payload in self.database.query(
            f"SELECT cache_key, payload FROM cache WHERE cache_key IN ({marks}) AND expires_at > ?",
            (*keys, timestamp(now)))}
        missing = [(key, platform) for key, platform in zip(keys, self.platforms) if key not in cached]
        if missing:
            self._platforms_answer()
            fetched = {key: rates(random.Random(), widget_id, platform) for key, platform in missing}
            self.database.executemany(self._store, [
                (key, widget_id, json.dumps(payload), timestamp(now), timestamp(now + CACHE_TTL))
                for key, payload in fetched.items()])
            cached.update(fetched)
        return [cached[key] for key in keys], not missing


class WidgetHandler(BaseHTTPRequestHandler):
    server: "WidgetServer"
    # A client that connects and sends nothing would hold a worker for good.
    timeout = 10

    def do_GET(self) -> None:
        match = _PATH.match(self.path.split("?")[0])
        if match is None:
            self._reply(404, {"status": "error", "message": "no such widget endpoint"})
            return
        widget_id = int(match[1])
        try:
            answer, hit = self.server.rates.answer(widget_id)
        except (DatabaseError, ValueError) as exc:  # ValueError: a cache payload that is not JSON
            self._reply(503, {"status": "error", "message": f"the cache is unavailable: {exc}"})
            return
        self._reply(200, {"status": "success", "data": {"widget_id": widget_id, "rates": answer}},
                    {"X-Cache": "HIT" if hit else "MISS"})

    def _reply(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


class WidgetServer(HTTPServer):
    """HTTPServer whose requests run on a fixed pool, so each worker keeps one database connection."""

    def __init__(self, address: tuple[str, int], widget_rates: WidgetRates) -> None:
        # First: a failed bind calls server_close() from within HTTPServer's own __init__.
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="widget-standin")
        self.rates = widget_rates
        super().__init__(address, WidgetHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self._pool.submit(self._serve, request, client_address)

    def _serve(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - socketserver's own contract: report, close, serve on
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)


def serve(host: str, port: int, widget_rates: WidgetRates) -> WidgetServer:
    server = WidgetServer((host, port), widget_rates)
    threading.Thread(target=server.serve_forever, name="widget-standin", daemon=True).start()
    return server


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--config", "config_path", envvar="RATECARED_CONFIG", type=click.Path(dir_okay=False))
@click.option("--platform-ms", type=click.FloatRange(min=0), default=None,
              help="How long the platforms take to answer a cache miss (default: 20-80 ms).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
def main(config_path: str | None, platform_ms: float | None, command: tuple[str, ...]) -> None:
    """Serve the widget stand-in and run COMMAND (the daemon) until it exits."""
    try:
        config = load(config_path)
    except ConfigError as exc:
        click.echo(f"ratecared.demo_app: config error: {exc}", err=True)
        sys.exit(EX_CONFIG)
    url = urlsplit(config.jobs["warm_cache"].url or "")
    database = Database(config.database)
    try:
        server = serve(url.hostname or "127.0.0.1", url.port or 80,
                       WidgetRates(database, config.circuit_breaker.platforms, platform_ms))
    except OSError as exc:
        click.echo(f"ratecared.demo_app: cannot serve the widget stand-in on {url.hostname}:{url.port}: "
                   f"{exc.strerror} (is another `make run` going? change jobs.warm_cache.url in {config.path})",
                   err=True)
        sys.exit(1)
    click.echo(f"widget stand-in: http://{url.hostname}:{url.port}/api/v1/widgets/<id>/rates", err=True)
    child = subprocess.Popen(command)
    # The terminal sends Ctrl-C to the daemon too; here it only means "wait for it".
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    code = child.wait()
    server.shutdown()
    server.server_close()
    database.close()
    sys.exit(code)


if __name__ == "__main__":
    main()
