"""deploy/Dockerfile, linted by hadolint and checked by structure. The test suite needs no
Docker engine, so the image is never built by the tests."""
from __future__ import annotations

import re

from .tooling import DEPLOY, ROOT, run_tool

DOCKERFILE = DEPLOY / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
            for line in (raw.strip() for raw in text.splitlines()) if line and not line.startswith("#")]


def _final_stage() -> list[tuple[str, str]]:
    steps = _instructions()
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def test_hadolint_passes():
    result = run_tool("hadolint", "--no-color", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_base_is_a_cuda_runtime_image_with_python_3_11_or_3_12():
    args = dict(arg.split("=", 1) for op, arg in _instructions() if op == "ARG" and "=" in arg)
    image = args["CUDA_IMAGE"]
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-runtime-ubuntu\d\d\.\d\d", image), image
    assert [arg for op, arg in _instructions() if op == "FROM"] == ["${CUDA_IMAGE} AS build", "${CUDA_IMAGE}"]
    installs = " ".join(arg for op, arg in _final_stage() if op == "RUN")
    assert re.search(r"\bpython3\.1[12]\b", installs)


def test_the_image_runs_as_a_numeric_non_root_user():
    users = [arg for op, arg in _final_stage() if op == "USER"]
    assert users, "no USER in the final stage"
    uid, gid = users[-1].split(":")
    assert uid.isdigit() and int(uid) >= 1000 and gid.isdigit()
    steps = _final_stage()
    last_user = max(i for i, (op, _) in enumerate(steps) if op == "USER")
    assert not [op for op, _ in steps[last_user:] if op == "RUN"], "RUN after USER runs as the worker"


def test_it_starts_the_worker_and_serves_health_on_the_metrics_port():
    steps = dict((op, arg) for op, arg in _final_stage())
    assert steps["ENTRYPOINT"] == '["python", "-m", "worker"]'
    assert steps["CMD"] == '["run", "--config", "/etc/moderation/worker.toml"]'
    assert steps["EXPOSE"] == "9400"
    assert "/livez" in steps["HEALTHCHECK"] and ":9400/" in steps["HEALTHCHECK"]
    env = steps["ENV"]
    # Read-only root filesystem: caches and HOME on the writable /tmp, no .pyc writes.
    for setting in ("HOME=/tmp", "PYTHONDONTWRITEBYTECODE=1", "PYTHONPATH=/app"):
        assert setting in env


def test_the_image_sets_the_workers_allocator_tunables_so_it_needs_no_second_start():
    from worker.runtime.allocator import tuned_environment

    env = dict(_final_stage())["ENV"]
    tunables = re.search(r"GLIBC_TUNABLES=(\S+)", env)
    assert tunables, "no GLIBC_TUNABLES in the final stage's ENV"
    # every tunable the worker wants is there already: it would not start itself again
    assert tuned_environment({"GLIBC_TUNABLES": tunables.group(1)}, libc="glibc") is None


def test_what_it_copies_exists_and_is_not_docker_ignored():
    ignored = [line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for op, arg in _instructions():
        if op == "COPY" and not arg.startswith("--from"):
            *sources, _ = arg.split()
            for source in sources:
                assert (ROOT / source).exists(), source
                assert source.rstrip("/") not in ignored, source
