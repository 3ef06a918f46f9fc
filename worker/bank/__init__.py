"""Hash banks: video fingerprints (vPDQ style), the match rule, and the index over a bank.

A bank holds fingerprints of known videos: a positive bank of known-bad content that an
upload must be checked against, and a negative bank of known-good content whose frames must
never count as evidence of a match. ``fingerprint`` turns decoded frames into a fingerprint
and into ThreatExchange's vPDQ text; ``matching`` is the pure match rule and the linear scan
that serves as the oracle (the reference rule and the clip rule); ``index`` finds the same
matches through a multi-index-hash index. ``entries`` are the records of the compacted bank
topic, which ``follower`` keeps every worker's ``service.HashBank`` in step with;
``takedowns`` adds a takedown's entry to its verdict's transaction; ``confirmations`` turns
reviewers' decisions into entries; ``densify`` fingerprints a takedown's entry again densely
and ``scoring`` publishes a match's classifier score, both after the verdict; ``transfer``
exports and imports hash lists; ``attach`` builds all of it for a worker from ``[bank]``.
"""
