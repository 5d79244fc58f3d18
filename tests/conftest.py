"""Shared test setup: every test gets its own artifacts root and data cache,
so nothing touches the real artifacts/ or ~/.cache, and no test needs a network."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("CIFAR_CACHE_DIR", str(tmp_path / "cache"))
    yield
