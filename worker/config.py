"""The one configuration object: a TOML file, then ``MODERATION_<SECTION>_<KEY>`` environment
variables, then ``--set section.key=value`` flags, each overriding the one before.
Validated once, at start-up; unknown keys are errors, not silently ignored.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

# The contract versions the worker can write (worker.core.events.VERSIONS; a test holds the two
# together, so that the config module needs no schema files).
CONTRACT_VERSIONS = ("1.0", "1.1", "1.2", "1.3")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap_servers: str = "localhost:9092"
    group_id: str = "deepfake-moderation"
    upload_topic: str = "uploads.v1"
    verdict_topic: str = "verdicts.v1"
    dead_letter_topic: str = "uploads.v1.dead-letter"
    client_id: str = "moderation-worker"
    # exactly_once: output and offset in one transaction (needs broker transactions);
    # at_least_once: publish, then commit; duplicates carry the same CloudEvents id.
    delivery: str = "exactly_once"
    transactional_id_prefix: str = ""
    # Static group membership (KIP-345): a restarted worker with the same instance id gets
    # its partitions back at once, without a rebalance. Use a stable id (a StatefulSet pod
    # name), or leave it empty for dynamic membership.
    group_instance_id: str = ""
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = ""
    ssl_cafile: str = ""
    ssl_certfile: str = ""   # mTLS: the worker's client certificate
    ssl_keyfile: str = ""
    ssl_password: str = ""
    max_event_bytes: int = 256 * 1024
    poll_timeout_ms: int = 500
    max_poll_records: int = 8
    max_poll_interval_ms: int = 600_000
    session_timeout_ms: int = 45_000
    publish_timeout_s: float = 30.0


@dataclass(frozen=True)
class MediaConfig:
    frames_per_video: int = 32
    max_video_bytes: int = 512 * 1024 * 1024
    fetch_timeout_s: float = 30.0          # the whole download, redirects included
    connect_timeout_s: float = 5.0
    uri_schemes: tuple[str, ...] = ("file", "http", "https")
    file_roots: tuple[str, ...] = ()        # file:// is refused unless the path is under one
    allowed_networks: tuple[str, ...] = ()  # non-public networks http(s) may reach, as CIDRs
    max_redirects: int = 3
    max_pixels: int = 4096 * 4096           # per frame, checked before decoding where possible
    max_duration_s: float = 3 * 3600.0
    sandbox: bool = True                    # decode in a child process with the limits below
    decode_timeout_s: float = 120.0
    decoder_memory_bytes: int = 4 * 1024 ** 3  # address space for decoding, above what the child maps at start
    # FFmpeg threads per decode (0: one per core). Videos in flight already decode in parallel,
    # and on a few sparse frames FFmpeg's frame threads cost more CPU than they save (figures in
    # docs/benchmarks.md, "What each change measured").
    decode_threads: int = 1
    # How far (a share of the spacing between sampled frames, at most 0.5) a sampled frame may
    # move to a frame that is cheaper to decode: a keyframe, or a frame the bank decodes
    # anyway. 0 samples exactly evenly, the DFDC winner's rule (its backend always does).
    frame_slack: float = 0.5


@dataclass(frozen=True)
class ProvenanceConfig:
    """Reading the C2PA Content Credentials of each upload (docs/provenance.md)."""

    enabled: bool = True
    # A PEM bundle of the CAs whose signatures count as trusted: the operator's own, or the
    # C2PA trust list. Empty: a good signature is "valid", never "trusted".
    trust_anchors: str = ""
    max_manifest_bytes: int = 16 * 1024 * 1024  # a larger store is reported unreadable, not parsed
    timeout_s: float = 30.0                     # the reader's deadline for one upload
    memory_bytes: int = 1024 ** 3               # the reader's address space, above what it maps at start


@dataclass(frozen=True)
class FacesConfig:
    max_side: int = 960
    min_face_size: int = 20
    min_confidence: float = 0.9
    batch_size: int = 16
    # With several videos in flight (worker.processing_threads > 1), frames of different
    # videos share detector calls: a call runs at max_batch frames or max_wait_ms after its
    # first frames arrived, whichever comes first (docs/runtime.md, "Pipelined runtime").
    max_batch: int = 64
    max_wait_ms: float = 10.0
    # "auto": share calls on a GPU only. On a CPU, batching buys MTCNN nothing and one
    # shared call at a time leaves cores idle during its serial parts, so each video's
    # thread runs its own ("on" / "off" force either).
    batch_across_videos: str = "auto"


@dataclass(frozen=True)
class ModelConfig:
    """Where the detector is described (its model file) and how this worker runs it.

    Everything that shapes a score (backend, checkpoints and their sha256, preprocessing,
    aggregation, calibration) is in the model file, so a model moves between workers as one
    reviewed file; only the runtime choices of this deployment are here.
    """

    config: str = ""        # the model file (TOML); empty: no model, faces go to review
    device: str = "auto"    # auto | cpu | cuda | cuda:N
    batch_size: int = 32    # face crops per device batch (across videos when several are in flight)
    max_wait_ms: float = 5.0  # how long a cross-video batch waits for more faces before it runs
    # auto: bf16 autocast on CUDA, fp32 on the CPU. bf16 on a CPU with native bf16 (AVX512-BF16
    # or AMX) halves EfficientNet-B0's time a face; the scores move by bf16 rounding, as on a GPU.
    precision: str = "auto"


# Keys of [model] before model files; named in the error so an old config is easy to move.
_MOVED_MODEL_KEYS = {"architecture", "name", "input_size", "crop_margin", "checkpoint", "checkpoint_sha256"}


@dataclass(frozen=True)
class PolicyConfig:
    takedown_threshold: float = 0.9
    review_threshold: float = 0.5


@dataclass(frozen=True)
class BankConfig:
    """The known-content hash bank, shared by all workers through a compacted topic."""

    enabled: bool = True
    topic: str = "moderation.hash-bank.v1"
    add_takedowns: bool = True     # a model's takedown adds the video to the bank
    # A matched upload's verdict goes out at once, without the models; with score_matches (and
    # a model) its upload event is queued on score_topic in the same transaction, and a
    # match-score record (schemas/v1/match-score) follows on the verdict topic.
    score_matches: bool = False
    score_topic: str = "moderation.match-scoring.v1"
    hash_rate_hz: float = 1.0
    max_hash_frames: int = 300
    # A short upload gets at least this many hash frames (a 2-s clip: 3 a second), so that the
    # clip rule (clip_min_frames) can judge it.
    min_hash_frames: int = 6
    # Entries (a model's takedown, a reviewer's confirmation with a video) are fingerprinted
    # from up to entry_hash_rate_hz frames a second (at most entry_max_hash_frames), thinned
    # to the frames that differ by more than entry_keep_distance bits (worker/bank/
    # fingerprint.thin_dense), so that a trimmed re-upload of a fast pan still lands on them.
    entry_hash_rate_hz: float = 30.0
    entry_max_hash_frames: int = 900
    entry_keep_distance: int = 16
    # A model's takedown enters the bank at once from the upload's own one-a-second hash
    # frames. With densify_topic set, the verdict's transaction also queues the upload there,
    # and the worker group (which then consumes it) replaces the entry with one fingerprinted
    # as above. Empty (the default, so a worker never subscribes to a topic nobody created):
    # takedown entries keep the upload's frames. The deploy configs set
    # moderation.bank-densify.v1.
    densify_topic: str = ""
    # Reviewers' confirmations (schemas/v1/reviewer-confirmation), consumed with the uploads;
    # empty (the default, so a worker never subscribes to a topic nobody created): not
    # consumed. The deploy configs set moderation.reviewer-confirmations.v1.
    confirmation_topic: str = ""
    # The match rules (worker/bank/matching.py): the reference rule (shares of the entry's and
    # of the upload's frames), and the clip rule (share of the upload's frames matched in the
    # entry's order, and at least this many frames; 0 turns it off).
    entry_threshold_pct: float = 80.0
    query_threshold_pct: float = 0.0
    clip_query_threshold_pct: float = 70.0
    clip_min_frames: int = 3


@dataclass(frozen=True)
class OrdersConfig:
    """Legal orders (docs/orders.md), consumed with the uploads and executed exactly once."""

    # The order topic (schemas/v1.3/legal-order); empty (the default, so a worker never
    # subscribes to a topic nobody created): not consumed. The deploy configs set
    # moderation.legal-orders.v1.
    topic: str = ""
    status_topic: str = "moderation.order-status.v1"
    # An order without its own deadline has received_at plus these hours: 3 by the IT Rules,
    # and per category ("name=hours", e.g. ncii=2 for non-consensual intimate imagery).
    deadline_hours: float = 3.0
    category_deadline_hours: tuple[str, ...] = ("ncii=2",)


@dataclass(frozen=True)
class MetricsConfig:
    host: str = "0.0.0.0"
    port: int = 9400


@dataclass(frozen=True)
class WorkerConfig:
    id: str = field(default_factory=socket.gethostname)
    log_level: str = "INFO"
    processing_threads: int = 1   # videos processed at once (their GPU stages share batches)
    # torch's CPU threads for detection and classification. 0: torch's default (one per core),
    # except on a CPU device with several videos in flight, where they share the cores
    # (cores // processing_threads, at least 1): fewer threads per call spend less CPU on
    # synchronisation when the videos in flight keep the cores busy anyway.
    torch_threads: int = 0
    # Records of one partition started but not yet delivered: several run at once, and
    # their results are committed in offset order (a finished one waits for older ones).
    partition_window: int = 16
    max_outputs_per_commit: int = 16  # consecutive results of a partition in one transaction
    video_deadline_s: float = 300.0
    shutdown_deadline_s: float = 60.0
    stall_after_s: float = 300.0  # /livez fails when the poll loop has not turned for this long
    # /livez fails when a face-detection or classification call has run this long (a hung device)
    device_call_deadline_s: float = 180.0
    # Latencies run on the Kafka record's timestamp; one outside [-clock_skew_s, latency_window_s]
    # (on either clock: the record's, or the producer's uploaded_at) is counted, never observed.
    latency_window_s: float = 86_400.0
    clock_skew_s: float = 300.0
    dedupe_window: int = 100_000
    # The verdict contract's minor version to write: "1.0" until every consumer validates
    # against the newer files (docs/events.md, "Evolving the contracts").
    verdict_schema: str = "1.3"


@dataclass(frozen=True)
class Config:
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    provenance: ProvenanceConfig = field(default_factory=ProvenanceConfig)
    faces: FacesConfig = field(default_factory=FacesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    bank: BankConfig = field(default_factory=BankConfig)
    orders: OrdersConfig = field(default_factory=OrdersConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)

    def __post_init__(self):
        problems = []
        if self.media.frames_per_video < 1:
            problems.append("media.frames_per_video must be at least 1")
        if not 0 <= self.media.frame_slack <= 0.5:
            problems.append("media.frame_slack must be within [0, 0.5]")
        if self.media.max_video_bytes < 1:
            problems.append("media.max_video_bytes must be positive")
        if self.orders.topic and not self.bank.enabled:
            problems.append("orders.topic needs bank.enabled: an order adds its targets to the hash bank")
        if self.orders.deadline_hours <= 0:
            problems.append("orders.deadline_hours must be positive")
        for entry in self.orders.category_deadline_hours:
            name, sep, hours = entry.partition("=")
            try:
                good = bool(sep and name.strip()) and float(hours) > 0
            except ValueError:
                good = False
            if not good:
                problems.append(f"orders.category_deadline_hours: {entry!r} is not category=hours (hours above 0)")
        if self.provenance.max_manifest_bytes < 1 or self.provenance.timeout_s <= 0:
            problems.append("provenance.max_manifest_bytes and provenance.timeout_s must be positive")
        if self.model.batch_size < 1:
            problems.append("model.batch_size must be at least 1")
        if self.model.device not in ("auto", "cpu", "cuda") and not self.model.device.startswith("cuda:"):
            problems.append("model.device is auto, cpu, cuda or cuda:N")
        if not 0 <= self.policy.review_threshold <= self.policy.takedown_threshold <= 1:
            problems.append("policy thresholds need 0 <= review_threshold <= takedown_threshold <= 1")
        if self.kafka.delivery not in ("exactly_once", "at_least_once"):
            problems.append("kafka.delivery is exactly_once or at_least_once")
        if self.worker.processing_threads < 1:
            problems.append("worker.processing_threads must be at least 1")
        if self.worker.torch_threads < 0:
            problems.append("worker.torch_threads must not be negative (0: automatic)")
        if self.model.precision not in ("auto", "fp32", "bf16"):
            problems.append("model.precision is auto, fp32 or bf16")
        if self.faces.batch_across_videos not in ("auto", "on", "off"):
            problems.append("faces.batch_across_videos is auto, on or off")
        if self.faces.max_batch < 1 or self.faces.max_wait_ms < 0 or self.model.max_wait_ms < 0:
            problems.append("faces.max_batch must be at least 1; faces.max_wait_ms and "
                            "model.max_wait_ms not negative")
        if self.worker.device_call_deadline_s <= 0 or self.worker.stall_after_s <= 0:
            problems.append("worker.device_call_deadline_s and worker.stall_after_s must be positive")
        if self.worker.latency_window_s <= 0 or self.worker.clock_skew_s < 0:
            problems.append("worker.latency_window_s must be positive and worker.clock_skew_s not negative")
        if self.worker.verdict_schema not in CONTRACT_VERSIONS:
            problems.append(f"worker.verdict_schema is one of {', '.join(CONTRACT_VERSIONS)}")
        if self.worker.partition_window < 1 or self.worker.max_outputs_per_commit < 1:
            problems.append("worker.partition_window and worker.max_outputs_per_commit must be at least 1")
        bank = self.bank
        if bank.min_hash_frames < 0 or bank.max_hash_frames < 1 or bank.entry_max_hash_frames < 1:
            problems.append("bank.min_hash_frames must not be negative; bank.max_hash_frames and "
                            "bank.entry_max_hash_frames must be at least 1")
        if bank.hash_rate_hz <= 0 or bank.entry_hash_rate_hz < bank.hash_rate_hz:
            problems.append("bank.hash_rate_hz must be positive, and bank.entry_hash_rate_hz at least as high")
        if not 0 <= bank.entry_keep_distance < 256:
            problems.append("bank.entry_keep_distance is a number of bits, 0..255")
        if problems:
            raise ConfigError("; ".join(problems))

    def replace(self, **sections: Mapping[str, Any]) -> "Config":
        """A copy with some keys changed, e.g. ``cfg.replace(kafka={"group_id": "g"})``."""
        return _build(self, {name: dict(values) for name, values in sections.items()})


def _coerce(value: Any, default: Any, where: str) -> Any:
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if isinstance(default, tuple):
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            if not isinstance(value, (list, tuple)):
                raise TypeError(value)
            return tuple(str(v) for v in value)
        if isinstance(value, (list, tuple, dict)):
            raise TypeError(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: cannot read {value!r} as {type(default).__name__}") from None


def _build(base: Config, layers: Mapping[str, Mapping[str, Any]]) -> Config:
    sections = {}
    for section in dataclasses.fields(Config):
        current = getattr(base, section.name)
        changes = layers.get(section.name, {})
        if not isinstance(changes, Mapping):
            raise ConfigError(f"[{section.name}] must be a table of keys, got {changes!r}")
        changes = dict(changes)
        known = {f.name for f in dataclasses.fields(current)}
        unknown = set(changes) - known
        if section.name == "model" and unknown & _MOVED_MODEL_KEYS:
            raise ConfigError(f"model.{', model.'.join(sorted(unknown & _MOVED_MODEL_KEYS))} moved to the "
                              "model file: set model.config to a model file (docs/model-file.md)")
        if unknown:
            raise ConfigError(f"unknown key(s) in [{section.name}]: {', '.join(sorted(unknown))}")
        coerced = {k: _coerce(v, getattr(current, k), f"{section.name}.{k}") for k, v in changes.items()}
        sections[section.name] = dataclasses.replace(current, **coerced)
    unknown_sections = set(layers) - set(sections)
    if unknown_sections:
        raise ConfigError(f"unknown section(s): {', '.join(sorted(unknown_sections))}")
    return Config(**sections)


def load_config(path: Path | str | None = None, env: Mapping[str, str] | None = None,
                overrides: Sequence[str] = ()) -> Config:
    env = os.environ if env is None else env
    config = Config()
    if path:
        try:
            config = _build(config, tomllib.loads(Path(path).read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
    from_env: dict[str, dict[str, str]] = {}
    for section in dataclasses.fields(Config):
        for key in dataclasses.fields(getattr(config, section.name)):
            name = f"MODERATION_{section.name}_{key.name}".upper()
            if name in env:
                from_env.setdefault(section.name, {})[key.name] = env[name]
    config = _build(config, from_env)
    from_flags: dict[str, dict[str, str]] = {}
    for item in overrides:
        dotted, sep, value = item.partition("=")
        section, dot, key = dotted.partition(".")
        if not sep or not dot:
            raise ConfigError(f"--set wants section.key=value, got {item!r}")
        from_flags.setdefault(section.strip(), {})[key.strip()] = value
    return _build(config, from_flags)
