"""``python -m worker demo``: the whole flow on a local broker, in under a minute.

1. The sample uploads, a missing video and a record that is not JSON: a verdict or a dead
   letter each. An upload whose C2PA Content Credentials (signed here with a throwaway CA,
   configured as the trust anchor) say a generator made it is labelled ``ai_generated``.
2. A court's takedown order for one of the sample videos, executed once: its ``legal_order``
   takedown verdict, then the order's status with the time it took against its deadline.
3. A re-encode of the ordered video, uploaded again: the hash bank (fed by the order) catches
   it, and its verdict names the order's entry.

Each result is printed as it arrives; the exit status is 0 only when every step's result
came and said what it should. Needs the ``test`` extra (PyAV re-encodes, ``cryptography``
makes the CA); ``make demo`` installs it.
"""
from __future__ import annotations

import json
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path
from typing import Callable

from prometheus_client import CollectorRegistry

ORDER_ID = "DEMO-HC-2026-1"
ORDERED = "carphone_pristine"  # the sample video the order takes down
LINE = "  {:<22} {}"


def reencode(source: Path, dest: Path, crf: int = 32) -> Path:
    """``source`` decoded and encoded again with x264 at another quality: every frame's bytes
    change, the picture stays (what a re-uploader's tool does)."""
    import av

    with av.open(str(source)) as src, av.open(str(dest), "w", format="mp4") as out:
        video = src.streams.video[0]
        rate = round(video.average_rate or 25)
        stream = out.add_stream("libx264", rate=rate, options={"preset": "veryfast", "crf": str(crf)})
        stream.width, stream.height = video.codec_context.width // 2 * 2, video.codec_context.height // 2 * 2
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, rate)
        for index, frame in enumerate(src.decode(video)):
            picture = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24")[:stream.height, :stream.width],
                                                 format="rgb24")
            picture.pts = index
            out.mux(stream.encode(picture))
        out.mux(stream.encode())
    return dest


def summary(record: dict) -> str:
    """One line for a verdict, a dead letter or an order's status."""
    data = record["data"]
    if record["type"].startswith("dev.moderation.order-status"):
        done = sum(t["status"] == "done" for t in data["targets"])
        hours = data["deadline_seconds"] / 3600
        return LINE.format(f"order {data['order_id']}"[:22], (
            f"{data['status'].upper():<9} {done}/{len(data['targets'])} targets executed "
            f"{data['elapsed_seconds']:.2f}s after receipt, deadline {hours:g} h "
            f"({'within' if data['within_deadline'] else 'PAST'} the deadline)"))
    if record["type"].startswith("dev.moderation.verdict"):
        score = "-" if data["video_score"] is None else f"{data['video_score']:.3f}"
        lat = data["latency_seconds"]
        extra = ""
        if data.get("credentials", {}).get("state", "absent") != "absent":
            extra += f" credentials={data['credentials']['state']}"
        if data.get("label", {}).get("status", "none") != "none":
            label = data["label"]
            extra += f" label={label['status']}:{label['kind']} ({','.join(label['basis'])})"
        if "legal_order" in data:
            extra += f" order={data['legal_order']['order_id']}"
        if "known_content" in data:
            extra += f" entry={data['known_content']['entry_id']}"
        return LINE.format(data["video_id"], (
            f"{data['decision'].upper():<9} reasons={','.join(data['reasons'])}  "
            f"faces={data['face_count']} tracks={len(data['tracks'])} score={score} "
            f"latency={lat['end_to_end']:.2f}s (processing {lat['processing']:.2f}s){extra}"))
    return LINE.format(data.get("video_id") or "?", f"DEAD-LETTER reason={data['reason']}  {data['message'][:80]}")


def collect(consumer, expected: int, deadline: float, alive: Callable[[], bool], echo: bool = True) -> list[dict]:
    """The results, each printed as it comes (``echo``), until ``expected`` came or the time is up."""
    seen: list[dict] = []
    while len(seen) < expected and time.monotonic() < deadline and alive():
        for records in consumer.poll(timeout_ms=300).values():
            for record in records:
                seen.append(json.loads(record.value))
                if echo:
                    print(summary(seen[-1]), flush=True)
    return seen


def wait_for_entries(registry: CollectorRegistry, count: int, deadline: float) -> bool:
    """Until the worker's bank follower holds ``count`` positive entries."""
    while (registry.get_sample_value("moderation_bank_entries", {"bank": "positive"}) or 0) < count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def run_demo(load_config: Callable[[list[str]], object], timeout_s: float) -> int:
    from worker.app import serve
    from worker.core.events import upload_event
    from worker.orders.records import order_event
    from worker.runtime.clients import build_producer, build_results_consumer, ensure_topics
    from worker.testing.credentials import sign_video
    from worker.testing.local_kafka import LocalKafka
    from worker.testing.samples import NAMES, sample_dir, sample_video
    from worker.testing.tls import CertificateAuthority

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="moderation-demo-") as scratch, LocalKafka() as broker:
        folder = Path(scratch)
        authority = CertificateAuthority(folder, "demo-c2pa", organization="Demo Trust Services")
        signer = authority.issue("Demo Generator Signing Key", signing=True, organization="Demo Generator Ltd")
        signed = sign_video(sample_video(f"{ORDERED}.mp4"), folder / "ai-credentials.mp4", signer,
                            "trainedAlgorithmicMedia", generator="demo-generator")
        reupload = reencode(sample_video(f"{ORDERED}.mp4"), folder / "reupload.mp4")
        run = uuid.uuid4().hex[:8]
        cfg = load_config([
            f"kafka.bootstrap_servers={broker.bootstrap_servers}", f"kafka.group_id=demo-{run}",
            "metrics.host=127.0.0.1", "metrics.port=0", f"media.file_roots={sample_dir()},{folder}",
            f"provenance.trust_anchors={authority.cert_path}", "orders.topic=moderation.legal-orders.v1"])
        ensure_topics(cfg.kafka, bank_topic=cfg.bank.topic if cfg.bank.enabled else None,
                      extra_topics=(cfg.bank.confirmation_topic, cfg.bank.score_topic, cfg.bank.densify_topic,
                                    cfg.orders.topic, cfg.orders.status_topic)
                      if cfg.bank.enabled else ())
        stop, ports, registry = threading.Event(), [], CollectorRegistry()
        worker = threading.Thread(target=serve, args=(cfg, stop),
                                  kwargs={"on_http": ports.append, "registry": registry}, name="worker")
        worker.start()
        print(f"Broker {broker.bootstrap_servers}; topics {cfg.kafka.upload_topic} -> "
              f"{cfg.kafka.verdict_topic} / {cfg.kafka.dead_letter_topic}; orders on {cfg.orders.topic}",
              flush=True)
        producer = build_producer(cfg.kafka)
        results = build_results_consumer(cfg.kafka, extra_topics=(cfg.orders.status_topic,))
        deadline = time.monotonic() + timeout_s
        try:
            uploads = [(name.removesuffix(".mp4"), sample_video(name).as_uri()) for name in NAMES]
            uploads.append(("missing-video", (sample_dir() / "no-such-upload.mp4").as_uri()))
            uploads.append(("ai-credentials", signed.as_uri()))
            for video_id, uri in uploads:
                producer.send(cfg.kafka.upload_topic, key=video_id.encode(),
                              value=upload_event(video_id, uri, "demo-uploader")).get(30)
            producer.send(cfg.kafka.upload_topic, key=b"garbage", value=b"this is not JSON").get(30)
            print(f"Published {len(uploads) + 1} upload events; waiting for verdicts "
                  f"(the first video also waits for the models to load)...", flush=True)
            first = collect(results, len(uploads) + 1, deadline, worker.is_alive)

            received = datetime.now(timezone.utc)
            producer.send(cfg.orders.topic, key=ORDER_ID.encode(), value=order_event(ORDER_ID, [
                {"target_id": ORDERED, "video_id": ORDERED, "video_uri": sample_video(f"{ORDERED}.mp4").as_uri()}],
                received, authority=("court", "High Court of Delhi"),
                legal_reference="IT Rules 2021 r. 3(1)(d)")).get(30)
            print(f"A court's order {ORDER_ID} arrived: take {ORDERED} down (3 h deadline)...", flush=True)
            ordered = collect(results, 2, deadline, worker.is_alive, echo=False)
            for result in sorted(ordered, key=lambda r: "order-status" in r["type"]):  # the status last
                print(summary(result), flush=True)

            caught = []
            if wait_for_entries(registry, 1, deadline):
                producer.send(cfg.kafka.upload_topic, key=b"reupload", value=upload_event(
                    "reupload", reupload.as_uri(), "another-uploader")).get(30)
                print(f"Someone uploads a re-encode of {ORDERED} (every frame's bytes differ)...", flush=True)
                caught = collect(results, 1, deadline, worker.is_alive)
        finally:
            producer.close()
            results.close()
            if ports:
                print(f"Metrics were at http://127.0.0.1:{ports[0]}/metrics", flush=True)
            stop.set()
            worker.join(timeout=60)
    problems = _check(first, len(uploads) + 1, ordered, caught)
    for problem in problems:
        print(f"NOT AS EXPECTED: {problem}")
    print(f"{len(first) + len(ordered) + len(caught)}/{len(uploads) + 4} results in "
          f"{time.monotonic() - started:.1f}s; broker stopped.")
    return 1 if problems else 0


def _check(first: list[dict], uploads: int, ordered: list[dict], caught: list[dict]) -> list[str]:
    """What each step should have shown, as problems (none when it did)."""
    problems = []
    if len(first) != uploads:
        problems.append(f"{len(first)} of {uploads} upload results came")
    labelled = [r["data"] for r in first if r["data"].get("video_id") == "ai-credentials" and "label" in r["data"]]
    if not labelled or labelled[0]["label"]["status"] != "apply":
        problems.append("the upload with AI credentials was not labelled")
    statuses = [r["data"] for r in ordered if r["type"].startswith("dev.moderation.order-status")]
    takedowns = [r["data"] for r in ordered if "legal_order" in r["data"]]
    if not statuses or statuses[0]["status"] != "done" or len(takedowns) != 1:
        problems.append("the order was not executed")
    if not caught or caught[0]["data"].get("known_content", {}).get("entry_id") != f"order:{ORDER_ID}:{ORDERED}":
        problems.append("the re-upload was not caught by the order's bank entry")
    return problems
