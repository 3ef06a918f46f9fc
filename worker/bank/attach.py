"""The hash bank attached to a worker: what ``[bank]`` turns on, built in one place.

With the bank on, a worker follows the compacted bank topic into its own index (uploads
wait until all of it is loaded), checks every upload against it before the models, adds
its takedowns' fingerprints to the verdict's transaction (:mod:`worker.bank.takedowns`),
and consumes the bank's side topics next to the uploads: reviewers' confirmations,
takedowns to fingerprint densely, and matches to score.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from worker.bank.confirmations import ConfirmationHandler, VideoFingerprinter
from worker.bank.densify import TakedownDensifier
from worker.bank.fingerprint import HashingConfig
from worker.bank.follower import BankFollower
from worker.bank.index import BankIndex
from worker.bank.scoring import MatchScoring
from worker.bank.service import HashBank, match_rule
from worker.bank.takedowns import TakedownRecords
from worker.config import Config
from worker.core.pipeline import FrameSampler, Pipeline


def bank_hashing() -> HashingConfig:
    """How the bank hashes the frames it is given: all of them (the decoder has already
    picked the hash frames: about one a second, more for a short upload, dense for an entry)."""
    return HashingConfig(seconds_per_hash=0)


@dataclass
class AttachedBank:
    """``pipeline`` checks the bank before the models; ``hooks`` and ``side_topics`` go to
    the runner's outputs; ``follower`` must be started, and loaded before uploads are read."""

    pipeline: Pipeline
    follower: BankFollower | None = None
    bank: HashBank | None = None
    hooks: list = field(default_factory=list)
    side_topics: list = field(default_factory=list)
    entries: VideoFingerprinter | None = None  # fingerprints a video as a bank entry


def attach_bank(cfg: Config, pipeline: Pipeline, entry_sampler: Callable[[], FrameSampler],
                make_consumer: Callable[[], Any], on_loaded: Callable[[], None]) -> AttachedBank:
    """The bank's parts for this config; with ``bank.enabled`` off, the pipeline alone.
    ``entry_sampler`` builds the sampler of bank entries (dense hash frames);
    ``make_consumer`` builds a reader of the whole bank topic."""
    bank_cfg = cfg.bank
    if not bank_cfg.enabled:
        return AttachedBank(pipeline)
    bank = HashBank(BankIndex(match_rule(bank_cfg)), bank_hashing())
    follower = BankFollower(make_consumer, bank_cfg.topic, bank.apply, bank.remove, on_loaded=on_loaded)
    checked = pipeline.with_bank(bank)
    entries = VideoFingerprinter(checked.fetcher, entry_sampler(), bank_hashing(),
                                 bank_cfg.entry_keep_distance, 1.0 / bank_cfg.hash_rate_hz)
    side_topics: list = []
    if bank_cfg.confirmation_topic:
        side_topics.append(ConfirmationHandler(bank_cfg.confirmation_topic, bank_cfg.topic, entries,
                                               cfg.kafka.max_event_bytes))
    densify_topic = bank_cfg.densify_topic if bank_cfg.densify_topic and bank_cfg.add_takedowns else None
    if densify_topic:
        side_topics.append(TakedownDensifier(densify_topic, bank_cfg.topic, entries,
                                             bank.index.__contains__, cfg.worker.id,
                                             cfg.kafka.max_event_bytes))
    score_topic = None
    if bank_cfg.score_matches and pipeline.classifier is not None:
        score_topic = bank_cfg.score_topic
        side_topics.append(MatchScoring(score_topic, cfg.kafka.verdict_topic, pipeline, cfg.worker.id,
                                        cfg.kafka.max_event_bytes))
    hook = TakedownRecords(cfg.worker.id, bank_cfg.topic if bank_cfg.add_takedowns else None,
                           densify_topic, score_topic)
    return AttachedBank(checked, follower, bank, [hook], side_topics, entries)
