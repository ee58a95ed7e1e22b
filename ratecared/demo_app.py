"""A local stand-in for the web app's widget endpoint, for `make run`.

    python -m ratecared.demo_app --config examples/dev.toml -- ratecared --config examples/dev.toml

Serves `GET /api/v1/widgets/{id}/rates` on the host and port of the
configured warming URL, so warming makes real HTTP requests, and runs the
command after `--` (the daemon) as a child. Ctrl-C reaches both; this process
waits for the daemon to stop and exits with its status.
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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import click

from ratecared.config import EX_CONFIG, ConfigError, load

_PATH = re.compile(r"^/api/v1/widgets/(\d+)/rates$")


class WidgetHandler(BaseHTTPRequestHandler):
    """Answers like the app would after fetching the platforms: 20-80 ms, JSON rates."""

    def do_GET(self) -> None:
        match = _PATH.match(self.path.split("?")[0])
        if match is None:
            self._reply(404, {"status": "error", "message": "no such widget endpoint"})
            return
        time.sleep(random.uniform(0.02, 0.08))
        widget = int(match[1])
        rates = [{"platform": p, "price": round(random.uniform(60, 400), 2)} for p in ("booking", "expedia", "agoda")]
        self._reply(200, {"status": "success", "data": {"widget_id": widget, "rates": rates}})

    def _reply(self, status: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


def serve(host: str, port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), WidgetHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="widget-standin", daemon=True).start()
    return server


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--config", "config_path", envvar="RATECARED_CONFIG", type=click.Path(dir_okay=False))
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
def main(config_path: str | None, command: tuple[str, ...]) -> None:
    """Serve the widget stand-in and run COMMAND (the daemon) until it exits."""
    try:
        config = load(config_path)
    except ConfigError as exc:
        click.echo(f"ratecared.demo_app: config error: {exc}", err=True)
        sys.exit(EX_CONFIG)
    url = urlsplit(config.jobs["warm_cache"].url or "")
    try:
        server = serve(url.hostname or "127.0.0.1", url.port or 80)
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
    sys.exit(code)


if __name__ == "__main__":
    main()
