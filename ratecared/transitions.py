"""What the daemon does with each breaker transition: log it, and have it written at once."""

from __future__ import annotations

from typing import Any, Callable

from ratecared.breaker.machine import State, Transition


def on_transitions(log: Any, write_now: Callable[[], None]) -> Callable[[list[Transition]], None]:
    """The registry's `on_transition`: called after its lock is released, so it never delays a decision."""

    def handle(changes: list[Transition]) -> None:
        for change in changes:
            emit = log.warning if change.new is State.OPEN else log.info
            emit("breaker transition", platform=change.platform, old=change.old.value, new=change.new.value,
                 reason=change.reason, generation=change.generation)
        write_now()

    return handle
