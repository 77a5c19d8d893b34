"""The settings a worker gets (config.freeze): the same values as parsed, without pydantic."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from dockyard.config import Settings, freeze
from dockyard.frozen import FrozenSettings, Secret


def _settings() -> Settings:
    return Settings(
        listen="0.0.0.0:5123",
        data_dir=Path("/srv/dockyard"),
        workers=2,
        s3={"bucket": "b", "access_key_id": "k", "secret_access_key": "s3-secret"},
        auth={"mode": "basic", "access": [{"repository": "team/**", "pull": ["*"], "push": ["ann"]}]},
        events={"sinks": [{"name": "hook", "url": "https://example.test/hook", "secret": "hmac-key"}]},
        replication={"rules": [{"name": "mirror", "url": "https://mirror.test", "password": "pw"}]},
    )


def _assert_same(frozen: Any, model: Any) -> None:
    if isinstance(model, BaseModel):
        assert isinstance(frozen, FrozenSettings)
        for name in type(model).model_fields:
            _assert_same(getattr(frozen, name), getattr(model, name))
    elif isinstance(model, SecretStr):
        assert isinstance(frozen, Secret)
        assert frozen.get_secret_value() == model.get_secret_value()
    elif isinstance(model, list):
        assert len(frozen) == len(model)
        for a, b in zip(frozen, model, strict=True):
            _assert_same(a, b)
    else:
        assert frozen == model


def test_frozen_settings_hold_every_field_of_every_section() -> None:
    settings = _settings()
    _assert_same(freeze(settings), settings)


def test_frozen_settings_hold_the_values_of_the_properties() -> None:
    settings = _settings()
    frozen = freeze(settings)
    for name in ("local_url", "events_enabled", "host", "port", "metadata_url"):
        assert getattr(frozen, name) == getattr(settings, name), name


def test_frozen_settings_survive_pickling_and_are_read_only() -> None:
    frozen = pickle.loads(pickle.dumps(freeze(_settings())))
    _assert_same(frozen, _settings())
    try:
        frozen.workers = 3
    except AttributeError:
        pass
    else:
        raise AssertionError("a frozen setting was changed")


def test_frozen_secrets_stay_hidden_in_reprs() -> None:
    text = repr(freeze(_settings()))
    for secret in ("s3-secret", "hmac-key", "pw'"):
        assert secret not in text


def test_unpickling_frozen_settings_imports_no_pydantic() -> None:
    data = pickle.dumps(freeze(_settings()))
    code = (
        "import pickle, sys; s = pickle.loads(sys.stdin.buffer.read()); "
        "assert s.s3.secret_access_key.get_secret_value() == 's3-secret'; "
        "print(sorted(m for m in sys.modules if m.startswith('pydantic')))"
    )
    out = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True, check=True)
    assert out.stdout.decode().strip() == "[]"
