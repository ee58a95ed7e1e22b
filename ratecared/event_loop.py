"""Which event loop the daemon serves on (DESIGN §3): uvloop when it is installed, asyncio's own otherwise.

`daemon.event_loop` is "auto" (the default), "uvloop" (a config error
without it) or "asyncio". Both loops run the same server: it uses only the
transport and loop methods they share.
"""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Callable

CHOICES = ("auto", "uvloop", "asyncio")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def available() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def factory(choice: str) -> tuple[LoopFactory | None, str]:
    """The loop factory for asyncio.Runner (None: asyncio's own loop) and the loop's name for the log."""
    if choice != "asyncio" and available():
        import uvloop

        return uvloop.new_event_loop, f"uvloop {uvloop.__version__}"
    return None, "asyncio"
