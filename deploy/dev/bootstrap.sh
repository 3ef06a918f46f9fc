#!/usr/bin/env bash
# Everything the quick start and the tests need on a fresh machine, idempotent:
# a virtual environment with the pinned packages (which carry MTCNN's weights and the
# sample videos), a Java runtime and Maven, and the Apache Kafka broker jars.
set -euo pipefail
cd "$(dirname "$0")/../.."

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

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "== installing Python packages (torch is large: a few minutes the first time)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi

echo "== Kafka broker jars (Maven Central, cached in deploy/kafka-local/target/lib)"
.venv/bin/python -c "from worker.local_kafka import ensure_jars; print(ensure_jars())"
.venv/bin/python -c "from worker.samples import NAMES, sample_video; [sample_video(n) for n in NAMES]"
