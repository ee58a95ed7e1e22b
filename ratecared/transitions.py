"""What the daemon does with each breaker transition: log it, record its event, have the snapshot written at once.

By the time these run the transition is already on disk in the breaker
journal (the registry syncs it first), so the snapshot is the journal's
fold, not what makes the transition durable.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable

from ratecared.breaker.machine import State, Transition
from ratecared.events import Event, of_transition


def on_transitions(log: Any, write_now: Callable[[], None],
                   record: Callable[[list[Event]], None]) -> Callable[[list[Transition]], None]:
    """The registry's `on_transition`: called after its lock is released, so it never delays another decision."""

    def handle(changes: list[Transition]) -> None:
        for change in changes:
            emit = log.warning if change.new is State.OPEN else log.info
            emit("breaker transition", platform=change.platform, old=change.old.value, new=change.new.value,
                 reason=change.reason, generation=change.generation,
                 **({} if change.kind == "transition" else {"action": change.kind, "by": change.who}))
        at = datetime.now(timezone.utc)
        record([of_transition(change, at) for change in changes])
        write_now()

    return handle
