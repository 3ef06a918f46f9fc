"""Command line: ``python -m worker {run,demo,score,bank,train,eval,calibrate,broker}``."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from worker.runtime.allocator import reexec_with_tuned_allocator

# the allocator's settings are read when a process starts: see worker/runtime/allocator.py
if sys.argv[1:2] in (["run"], ["demo"], ["score"]):
    reexec_with_tuned_allocator()

# ``run``: SIGTERM/SIGINT only set this event, from the first moment, so a worker told to stop
# while it is still importing torch or loading models exits cleanly instead of dying of the
# signal. Other commands keep the default handling (Ctrl-C interrupts them).
_STOP = threading.Event()


def _stop_on_signals() -> threading.Event:
    """Set by SIGTERM or SIGINT (for ``run``, also one that arrived during start-up)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: _STOP.set())
    return _STOP


if sys.argv[1:2] == ["run"]:
    _stop_on_signals()

import torch  # noqa: E402,F401  -- before decord, which the commands import: see docs/runtime.md, "Pitfalls"


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config key (repeatable)")


def _config(args, **extra):
    from worker.config import load_config
    return load_config(args.config, overrides=[*args.overrides, *extra.get("overrides", [])])


def cmd_run(args) -> int:
    import logging

    from worker.app import serve
    from worker.logs import setup_logging
    from worker.runtime.access import ClusterAccessError

    cfg = _config(args)
    setup_logging(cfg.worker.log_level)
    try:
        serve(cfg, _stop_on_signals())
    except ClusterAccessError as exc:
        # the cluster refused the worker: one line, and an exit code of its own
        logging.getLogger("worker").critical("cannot start: %s", exc)
        return exc.exit_code
    return 0


def cmd_score(args) -> int:
    """Score one local file or URL without Kafka; print the verdict record."""
    from worker.app import build_pipeline
    from worker.core.dead_letters import DeadLetter
    from worker.core.events import local_upload, utcnow, verdict_record
    from worker.logs import setup_logging

    target = args.video
    extra = ["metrics.port=0"]
    if "://" not in target:  # the operator named this file: allow its folder
        extra.append(f"media.file_roots={Path(target).resolve().parent}")
    cfg = _config(args, overrides=extra)
    setup_logging("WARNING")
    try:
        event = local_upload(target, "cli")
        verdict = build_pipeline(cfg).process(event)
    except DeadLetter as failure:
        print(json.dumps({"dead_letter": failure.reason, "message": failure.message}))
        return 2
    _, value = verdict_record(verdict, cfg.worker.id, utcnow())
    print(json.dumps(json.loads(value), indent=2))
    return 0


def cmd_credentials(args) -> int:
    """Print what a file's C2PA Content Credentials say, as the worker reads them."""
    from worker.provenance.sandbox import CredentialReader, ReaderSettings

    cfg = _config(args)
    if not Path(args.file).is_file():
        print(f"not a file: {args.file}", file=sys.stderr)
        return 2
    reader = CredentialReader(ReaderSettings.from_config(cfg.provenance))
    try:
        credentials = reader.read(Path(args.file))
    finally:
        reader.close()
    print(json.dumps(credentials.to_json(), indent=2))
    return 0


def cmd_broker(args) -> int:
    """Run the local development broker until interrupted."""
    from worker.testing.local_kafka import LocalKafka

    stop = _stop_on_signals()
    with LocalKafka() as broker:
        print(f"Kafka {broker.bootstrap_servers} (KRaft, single node); Ctrl-C stops it", flush=True)
        stop.wait()
    return 0


def cmd_demo(args) -> int:
    """Local broker and worker; sample uploads, a signed upload, a legal order and a re-upload."""
    from worker.logs import setup_logging
    from worker.testing.demo import run_demo

    setup_logging("ERROR")  # the demo prints each result itself
    print("Starting a local Apache Kafka broker (KRaft)...", flush=True)
    return run_demo(lambda overrides: _config(args, overrides=overrides), args.timeout)


def cmd_bank(args) -> int:
    """Export the hash bank to vPDQ files, or import vPDQ files into it."""
    from worker.bank.transfer import export_bank, load_hash_list, publish_entries, read_bank
    from worker.runtime.clients import build_bank_consumer, build_producer

    cfg = _config(args)
    if args.action == "export":
        consumer = build_bank_consumer(cfg.kafka)
        try:
            entries = read_bank(consumer, cfg.bank.topic)
        finally:
            consumer.close()
        count = export_bank(entries.values(), args.folder, 0.0 if args.all_frames else 1.0)
        print(f"exported {count} entries to {args.folder}")
        return 0
    entries = load_hash_list(args.folder, bank=args.bank, reason=args.reason, added_by=args.added_by)
    producer = build_producer(cfg.kafka)
    try:
        acks = []
        count = publish_entries(entries, cfg.bank.topic,
                                lambda topic, key, value: acks.append(producer.send(topic, key=key, value=value)))
        for ack in acks:
            ack.get(timeout=cfg.kafka.publish_timeout_s)
    finally:
        producer.close()
    print(f"imported {count} entries into {cfg.bank.topic}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="consume upload events from Kafka and publish verdicts")
    _add_config_args(p)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("demo", help="the whole flow on a local broker with the sample videos")
    _add_config_args(p)
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for all verdicts")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("score", help="score one local file or URL without Kafka")
    _add_config_args(p)
    p.add_argument("video", help="a path, file:// or http(s):// URI")
    p.set_defaults(func=cmd_score)
    p = sub.add_parser("credentials", help="print what a local file's C2PA Content Credentials say")
    _add_config_args(p)
    p.add_argument("file", help="a local video file")
    p.set_defaults(func=cmd_credentials)
    p = sub.add_parser("bank", help="export or import the hash bank as vPDQ files")
    _add_config_args(p)
    p.add_argument("action", choices=["export", "import"])
    p.add_argument("folder", type=Path, help="folder of vPDQ .txt files (and entries.jsonl)")
    p.add_argument("--bank", choices=["positive", "negative"], default="positive",
                   help="for files without entries.jsonl metadata")
    p.add_argument("--reason", default="imported")
    p.add_argument("--added-by", default="cli-import")
    p.add_argument("--all-frames", action="store_true",
                   help="export: every frame of dense entries, not the frame nearest each second "
                        "(vPDQ's cadence, what other platforms' matchers expect)")
    p.set_defaults(func=cmd_bank)
    p = sub.add_parser("train", help="fine-tune a timm backend on real videos with Self-Blended Images")
    from worker.training import cli as train_cli
    train_cli.add_arguments(p)
    p.set_defaults(func=train_cli.run)
    from worker.evaluation.commands import add_parsers as add_evaluation_parsers
    add_evaluation_parsers(sub, _add_config_args, _config)  # eval, calibrate
    p = sub.add_parser("broker", help="run the local development Kafka broker")
    p.set_defaults(func=cmd_broker)
    args = parser.parse_args(argv)
    from kafka.errors import KafkaError

    from worker.bank.transfer import HashListError
    from worker.config import ConfigError
    from worker.models.checkpoint import CheckpointError
    from worker.models.spec import ModelFileError
    from worker.provenance.sandbox import TrustAnchorsError
    try:
        return args.func(args)
    except (ConfigError, CheckpointError, ModelFileError, HashListError, KafkaError, TrustAnchorsError) as exc:
        # what the operator must fix (a file, a key, the cluster): one line, not a traceback
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
