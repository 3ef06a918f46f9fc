"""Session-wide fixtures: the real Kafka broker, test checkpoints, and the no-skip rule.

With ``MODERATION_REQUIRE_KAFKA_TESTS=1`` (set by ``make test`` and so by CI) the run
fails if any test was skipped or if no test against the real broker passed.
"""
from __future__ import annotations

import os

import pytest
import torch  # noqa: F401  -- before decord: see docs/runtime.md, "Pitfalls"

from worker.testing.local_kafka import LocalKafka

_outcomes = {"kafka_passed": 0, "skipped": []}


@pytest.fixture(scope="session")
def kafka_broker():
    """One real Apache Kafka broker (KRaft) for the whole run. If it cannot start, the
    Kafka tests error out; they are never skipped."""
    broker = LocalKafka().start()
    yield broker
    broker.stop()


def pytest_runtest_logreport(report):
    if report.skipped:
        _outcomes["skipped"].append(report.nodeid)
    elif report.when == "call" and report.passed and "kafka" in report.keywords:
        _outcomes["kafka_passed"] += 1


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("MODERATION_REQUIRE_KAFKA_TESTS") != "1":
        return
    problems = []
    if _outcomes["skipped"]:
        problems.append(f"{len(_outcomes['skipped'])} test(s) skipped: {_outcomes['skipped'][:5]}")
    if _outcomes["kafka_passed"] == 0 and not session.config.option.collectonly:
        problems.append("no test against the real Kafka broker passed")
    if problems:
        session.config.get_terminal_writer().line(
            "MODERATION_REQUIRE_KAFKA_TESTS: " + "; ".join(problems), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
