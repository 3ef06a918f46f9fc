"""Every backend a model file may name is registered, and implements the backend contract."""
from __future__ import annotations

import inspect

from worker.models.backend import Backend
from worker.models.loading import _REGISTERED
from worker.models.spec import BACKENDS


def test_every_backend_a_model_file_may_name_is_registered_under_its_name():
    assert set(_REGISTERED) == set(BACKENDS)
    assert all(backend.name == name for name, backend in _REGISTERED.items())


def test_every_backend_has_what_the_contract_asks_for():
    wanted = {name for name, _ in inspect.getmembers(Backend) if not name.startswith("_")}
    wanted |= set(Backend.__annotations__)
    for backend in _REGISTERED.values():
        missing = {name for name in wanted if not hasattr(backend, name)}
        assert missing == set(), f"{backend.name} lacks {missing}"
        assert backend.frame_slack is None or 0.0 <= backend.frame_slack <= 0.5


def test_only_the_dfdc_winner_fixes_its_frames():
    assert {name: b.frame_slack for name, b in _REGISTERED.items()} == {
        "dfdc_winner": 0.0, "timm": None, "torchscript": None}
