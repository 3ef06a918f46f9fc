"""model.device: "cuda" without a usable GPU stops the worker at start; "auto" falls back to
the CPU, says why in the log and exports it."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from prometheus_client import CollectorRegistry

from worker.app import DeviceError, cuda_unusable, select_device, start_device
from worker.config import ModelConfig
from worker.metrics import WorkerMetrics


def gpus(count: int) -> SimpleNamespace:
    """What torch.cuda answers on a machine with ``count`` usable GPUs."""
    return SimpleNamespace(is_available=lambda: count > 0, device_count=lambda: count)


def test_cpu_is_the_cpu_whatever_the_machine_has():
    assert select_device("cpu", gpus(2), "12.4") == torch.device("cpu")


def test_auto_takes_the_gpu_when_there_is_one_and_the_cpu_otherwise():
    assert select_device("auto", gpus(1), "12.4") == torch.device("cuda")
    assert select_device("auto", gpus(0), "12.4") == torch.device("cpu")
    assert select_device("auto", gpus(1), None) == torch.device("cpu")  # a CPU-only torch


@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_without_a_usable_gpu_is_a_start_up_error_that_says_why(name):
    with pytest.raises(DeviceError, match=r"finds no usable GPU .*driver older than CUDA 12\.4"):
        select_device(name, gpus(0), "12.4")
    with pytest.raises(DeviceError, match=r"CPU-only build"):
        select_device(name, gpus(1), None)


def test_a_gpu_index_the_process_does_not_see_is_refused():
    assert select_device("cuda:1", gpus(2), "12.4") == torch.device("cuda:1")
    with pytest.raises(DeviceError, match=r"sees 2 GPU\(s\)"):
        select_device("cuda:2", gpus(2), "12.4")


def test_the_reason_is_none_only_when_a_gpu_is_usable():
    assert cuda_unusable(gpus(1), "12.4") is None
    assert "no usable GPU" in cuda_unusable(gpus(0), "12.4")


def test_an_auto_fallback_is_logged_and_exported(caplog):
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    with caplog.at_level(logging.WARNING, logger="worker.app"):
        assert start_device(ModelConfig(device="auto"), metrics, gpus(0), "12.4").type == "cpu"
    assert registry.get_sample_value("moderation_device_fallback") == 1
    assert "model.device = auto runs on the CPU: torch" in caplog.text
    caplog.clear()
    assert start_device(ModelConfig(device="auto"), metrics, gpus(1), "12.4").type == "cuda"
    assert registry.get_sample_value("moderation_device_fallback") == 0
    assert start_device(ModelConfig(device="cpu"), metrics, gpus(0), "12.4").type == "cpu"
    assert registry.get_sample_value("moderation_device_fallback") == 0  # asked for: no fallback
    assert caplog.text == ""
