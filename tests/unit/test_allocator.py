"""The worker's allocator settings: merged into GLIBC_TUNABLES without overriding the
operator's, applied by starting the interpreter again, and effective in that process."""
import os
import subprocess
import sys
import textwrap

import pytest

from worker.runtime.allocator import MALLOC_TUNABLES, OPT_OUT, reexec_with_tuned_allocator, tuned_environment

OURS = ":".join(f"{k}={v}" for k, v in MALLOC_TUNABLES.items())


def test_the_tunables_are_added_to_an_environment_without_them():
    env = tuned_environment({"PATH": "/bin"}, libc="glibc")
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": OURS}


def test_the_operators_own_values_and_other_tunables_are_kept():
    mine = "glibc.cpu.hwcaps=-AVX512F:glibc.malloc.trim_threshold=5"
    env = tuned_environment({"GLIBC_TUNABLES": mine}, libc="glibc")
    assert env["GLIBC_TUNABLES"] == mine + ":glibc.malloc.mmap_threshold=268435456"


def test_nothing_changes_when_all_are_set_opted_out_or_not_glibc():
    assert tuned_environment({"GLIBC_TUNABLES": OURS}, libc="glibc") is None
    assert tuned_environment({OPT_OUT: "0"}, libc="glibc") is None
    assert tuned_environment({OPT_OUT: "off"}, libc="glibc") is None
    assert tuned_environment({}, libc="") is None  # musl, macOS
    assert tuned_environment({OPT_OUT: "1"}, libc="glibc") is not None


def test_the_process_starts_again_with_the_same_command_line():
    calls = []
    reexec_with_tuned_allocator(["python", "-m", "worker", "run"], {"HOME": "/tmp"},
                                execve=lambda *a: calls.append(a))
    [(path, argv, env)] = calls
    assert path == sys.executable and argv == ["python", "-m", "worker", "run"]
    assert env == {"HOME": "/tmp", "GLIBC_TUNABLES": OURS}
    reexec_with_tuned_allocator(["x"], {"GLIBC_TUNABLES": OURS}, execve=lambda *a: calls.append(a))
    assert len(calls) == 1  # already tuned: no second start


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tunables are Linux's")
def test_a_restarted_process_reuses_freed_memory_without_page_faults():
    """The real effect, in a real process: a 64 MiB buffer freed and allocated again touches
    no new pages once the process has started itself again under the tunables."""
    code = textwrap.dedent("""
        import os, resource, sys
        from worker.runtime.allocator import reexec_with_tuned_allocator
        reexec_with_tuned_allocator()
        import numpy as np
        def faults():
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buffer = np.ones(64 << 20, np.uint8); del buffer
        before = faults()
        buffer = np.ones(64 << 20, np.uint8); del buffer
        print(os.environ.get("GLIBC_TUNABLES"), faults() - before)
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", OPT_OUT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert out[0] == OURS
    assert int(out[1]) < 100  # 64 MiB of fresh 4-KiB pages would be 16384 faults
