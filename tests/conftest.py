import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import ModelLoaded, build_tiny_pipeline, write_pair_dataset  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_v_model(tmp_path_factory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny_v"), prediction_type="v_prediction")


@pytest.fixture(scope="session")
def pair_dir(tmp_path_factory) -> Path:
    return write_pair_dataset(tmp_path_factory.mktemp("pairs"))


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # Nothing in the suite may reach a hub: fail fast instead of timing out.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model raises ModelLoaded: a test of a refusal fails if the refusal comes after the load."""
    from duo_unlearn.trainer import models, train

    def refuse(*args, **kwargs):
        raise ModelLoaded()
    monkeypatch.setattr(models, "load_model", refuse)
    monkeypatch.setattr(train, "load_model", refuse)
