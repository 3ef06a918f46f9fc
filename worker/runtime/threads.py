"""The processing threads: each runs one record's job at a time, off the poll thread.

The poll thread must keep polling however long a video takes, so jobs run here; a job past
its deadline is abandoned and its thread replaced (a hung decoder or model call cannot be
interrupted from Python), so one stuck video cannot take the worker's capacity.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable


class ProcessingThreads:
    """Daemon threads running jobs; a job past its deadline is abandoned and its thread
    replaced, so one hung video cannot take the worker's capacity."""

    def __init__(self, count: int, run: Callable[[Any], Any]):
        # The runner starts no more jobs than there are threads; the bound is a safety net.
        self._jobs: queue.Queue = queue.Queue(maxsize=2 * count)
        self._run = run
        for _ in range(count):
            self._spawn()

    def _spawn(self) -> None:
        threading.Thread(target=self._loop, name="processing", daemon=True).start()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            record, future, abandoned = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self._run(record))
            except BaseException as exc:
                future.set_exception(exc)
            if abandoned.is_set():
                return  # a replacement thread took this one's place

    def submit(self, record: Any) -> tuple[Future, threading.Event]:
        future: Future = Future()
        abandoned = threading.Event()
        self._jobs.put((record, future, abandoned))
        return future, abandoned

    def replace(self, abandoned: threading.Event) -> None:
        abandoned.set()
        self._spawn()

    def stop(self, count: int) -> None:
        for _ in range(count):
            try:
                self._jobs.put_nowait(None)
            except queue.Full:  # daemon threads: they end with the process
                return


@dataclass(frozen=True)
class Job:
    """A record's job on a processing thread; ``abandoned`` lets its thread retire."""

    future: Future
    abandoned: threading.Event
