"""The command line refuses what an operator must fix with one line and exit code 2."""
from __future__ import annotations

import pytest

from worker.__main__ import main


@pytest.mark.parametrize("make", [
    lambda tmp: tmp / "missing",                                    # no such folder
    lambda tmp: tmp,                                                # an empty folder
    lambda tmp: (tmp / "bad.txt").write_text("not vpdq") and tmp,   # a malformed list
    lambda tmp: (tmp / "entries.jsonl").write_text("{nope") and tmp,  # a broken manifest
    lambda tmp: (tmp / "entries.jsonl").write_text('{"file": "a.txt"}') and tmp,  # no entry_id
], ids=["missing", "empty", "malformed-vpdq", "broken-manifest", "manifest-without-id"])
def test_bank_import_of_a_bad_folder_is_one_line_and_publishes_nothing(tmp_path, capsys, make):
    folder = make(tmp_path)
    # an unreachable broker: the folder must be refused before any Kafka client is built
    code = main(["bank", "import", str(folder), "--set", "kafka.bootstrap_servers=127.0.0.1:1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("HashListError: ") and "\n" not in err, err


def test_a_kafka_failure_is_one_line(monkeypatch, capsys, tmp_path):
    from kafka.errors import KafkaTimeoutError

    import worker.runtime.clients as clients

    def unreachable(cfg):
        raise KafkaTimeoutError("Unable to bootstrap from ['127.0.0.1:1']")

    monkeypatch.setattr(clients, "build_bank_consumer", unreachable)
    assert main(["bank", "export", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("KafkaTimeoutError") and "\n" not in err, err


def test_run_on_a_gpu_it_cannot_use_is_one_line_before_anything_starts(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # an unreachable broker: the device is checked before Kafka is tried
    code = main(["run", "--set", "model.device=cuda", "--set", "kafka.bootstrap_servers=127.0.0.1:1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("DeviceError: model.device = 'cuda', but "), err
    assert 'set model.device = "cpu"' in err[-1]
