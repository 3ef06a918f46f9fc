"""The project's own broker launcher: the ids it makes and the commands it runs."""
import uuid

from worker.testing import local_kafka
from worker.testing.local_kafka import _kafka_uuid, _Node

# The first six bits 111110 encode as "-" in URL-safe base64 (index 62).
_DASH_FIRST = uuid.UUID(bytes=b"\xf8" + bytes(15))


def test_ids_never_start_with_a_dash(monkeypatch):
    drawn = iter([_DASH_FIRST, _DASH_FIRST, uuid.UUID(int=1)])
    monkeypatch.setattr(local_kafka.uuid, "uuid4", lambda: next(drawn))
    assert _kafka_uuid() == "AAAAAAAAAAAAAAAAAAAAAQ"
    assert next(drawn, None) is None  # both dash-first draws were refused


def test_storage_format_takes_an_id_that_looks_like_an_option(tmp_path):
    # A CI run once failed when the random cluster id began with "-": kafka-storage read
    # "-t -z2f..." as a missing value. Ids are passed as --cluster-id=..., so even such an
    # id (which Kafka's own generator never makes, nor ours now) reaches the tool intact.
    node = _Node(tmp_path / "node")
    node.workdir.mkdir(parents=True)
    node.write_config(node.controller_address, replication=1, min_isr=1)
    cluster_id = "-" + _kafka_uuid()[1:]
    node.format(cluster_id, "--standalone")
    meta = (tmp_path / "node" / "data" / "meta.properties").read_text()
    assert f"cluster.id={cluster_id}" in meta
