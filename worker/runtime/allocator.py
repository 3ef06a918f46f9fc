"""glibc's allocator, told to keep the memory the worker frees and uses again.

Each video allocates and frees the same few large buffers: its frames (8 1080p frames are
50 MB), MTCNN's image pyramid in float32, the crops. glibc serves a request of more than
``mmap_threshold`` (128 KiB at first, raised up to 32 MiB as it sees large frees) with a
fresh ``mmap`` and unmaps it on ``free``, and it returns the top of the heap to the kernel
once more than ``trim_threshold`` of it is free. Either way the next video touches new
pages, and each first touch is a page fault in which the kernel zeroes the page. The
settings below keep that memory for the next video, which removes most of those faults and
the CPU time spent in them (figures in docs/benchmarks.md, "What each change measured").

The settings are glibc tunables, read once when a process starts, so the ``run``, ``demo``
and ``score`` commands start the interpreter again, at once and with the same arguments,
when the environment lacks them (:func:`reexec_with_tuned_allocator`; the process keeps
its PID). An operator who sets ``GLIBC_TUNABLES`` keeps every value set there; setting
``MODERATION_MALLOC_TUNING=0`` keeps glibc's defaults. The container image sets them
itself (``deploy/Dockerfile``), so it never needs the second start. The decoder's child
processes inherit them.

The cost: memory freed inside the heap stays with the process, so its RSS stays near the
peak of its working set instead of falling back between videos (up to ``trim_threshold``
of free heap is kept).
"""
from __future__ import annotations

import os
import platform
import sys
from typing import Callable, Mapping, Sequence

MALLOC_TUNABLES = {
    "glibc.malloc.mmap_threshold": 256 * 1024 * 1024,  # frames, pyramids and crops come from the heap
    "glibc.malloc.trim_threshold": 1024 * 1024 * 1024,  # and go back to it, not to the kernel
}
OPT_OUT = "MODERATION_MALLOC_TUNING"


def tuned_environment(environ: Mapping[str, str], libc: str | None = None) -> dict[str, str] | None:
    """``environ`` with :data:`MALLOC_TUNABLES` added to ``GLIBC_TUNABLES`` (the operator's
    own values win), or None when nothing is to change: not glibc, opted out, or every
    tunable already set."""
    if (libc if libc is not None else platform.libc_ver()[0]) != "glibc":
        return None
    if environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    current = [item for item in environ.get("GLIBC_TUNABLES", "").split(":") if item]
    named = {item.split("=", 1)[0] for item in current}
    missing = [f"{name}={value}" for name, value in MALLOC_TUNABLES.items() if name not in named]
    if not missing:
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(current + missing)}


def reexec_with_tuned_allocator(argv: Sequence[str] | None = None,
                                environ: Mapping[str, str] | None = None,
                                execve: Callable[[str, Sequence[str], Mapping[str, str]], None] = os.execve) -> None:
    """Start this interpreter again with the same command line (``sys.orig_argv``) under
    :func:`tuned_environment`, or return when there is nothing to change. Call it first
    thing, before threads or children exist."""
    env = tuned_environment(os.environ if environ is None else environ)
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    execve(sys.executable, list(sys.orig_argv if argv is None else argv), env)
