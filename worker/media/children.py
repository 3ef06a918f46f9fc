"""The idle children of a sandbox (the decoder's, the content-credentials reader's).

A child answers one job at a time and is then kept for the next. One that died while idle,
or that sent bytes nobody asked for since its last answer, is killed when it is taken, so
that a dead child never costs an event and its stray words are never read as the next
job's answer.
"""
from __future__ import annotations

import queue
from typing import Callable, Protocol, TypeVar


class Child(Protocol):
    def quiet(self) -> bool:
        """Alive, and nothing waiting on its stdout."""

    def kill(self) -> None:
        ...


C = TypeVar("C", bound=Child)


class IdleChildren(queue.SimpleQueue):
    """Children waiting for work (``put`` one back after its answer)."""

    def take(self, spawn: Callable[[], C]) -> C:
        """An idle child fit for the next job, or a new one from ``spawn``."""
        while True:
            try:
                child = self.get_nowait()
            except queue.Empty:
                return spawn()
            if child.quiet():
                return child
            child.kill()

    def close(self) -> None:
        """Kill every idle child."""
        while True:
            try:
                self.get_nowait().kill()
            except queue.Empty:
                return
