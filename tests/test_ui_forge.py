"""Forge frees its GPU through backend.memory_management (tests/fake_forge mirrors the real module's names and
signatures): the tab must use it, because Forge's sd_models.reload_model_weights / send_model_to_device are empty
stubs. Fast checks with the trainer replaced by a probe; the full train-then-compare run is in test_ui_a1111.py."""
import importlib.util
import sys
from pathlib import Path

import pytest

from duo_unlearn.trainer.errors import UserError

HERE = Path(__file__).resolve().parent
SHIM = HERE.parent / "scripts" / "duo_unlearn_tab.py"


def _purge():
    for key in [k for k in sys.modules if k.split(".")[0] in ("modules", "modules_forge", "backend",
                                                              "duo_unlearn_tab_script")]:
        del sys.modules[key]


@pytest.fixture
def forge(tmp_path, monkeypatch):
    _purge()
    monkeypatch.setenv("FAKE_WEBUI_DATA", str(tmp_path / "webui"))
    monkeypatch.syspath_prepend(str(HERE / "fake_a1111"))
    monkeypatch.syspath_prepend(str(HERE / "fake_forge"))
    from modules import sd_models, shared

    sd_models.register(str(tmp_path / "model.safetensors"))
    shared.cmd_opts.lora_dir = str(tmp_path / "MyLoras")
    yield
    _purge()


@pytest.fixture
def probe(monkeypatch):
    """Stands in for trainer.unlearn: records where Forge's models are while the training would run."""
    from duo_unlearn.trainer import unlearn as unlearn_module

    seen = {}

    def fake_unlearn(cfg, progress=None, **kwargs):
        from backend import memory_management
        from modules import shared

        objs = shared.sd_model.forge_objects
        seen["devices"] = {p.name: p.current_device for p in (objs.unet, objs.clip, objs.vae)}
        seen["loaded"] = list(memory_management.current_loaded_models)
        seen["events"] = [e[0] for e in memory_management.events]
        if seen.get("fail"):
            raise UserError("training failed")
        return "result"

    monkeypatch.setattr(unlearn_module, "unlearn", fake_unlearn)
    return seen


def _backend():
    from duo_unlearn.extension.backends import A1111Backend

    return A1111Backend()


def test_the_fake_is_forge(forge):
    """The fake's sd_models stubs do what Forge's do: nothing (so a backend calling them frees nothing)."""
    from backend import memory_management
    from modules import sd_models, shared

    assert _backend()._forge_memory() is memory_management
    assert shared.sd_model.device == "cuda" and len(memory_management.current_loaded_models) == 3
    sd_models.reload_model_weights()
    sd_models.send_model_to_device(shared.sd_model)
    assert memory_management.events == [] and shared.sd_model.device == "cuda"
    sd_models.unload_model_weights()  # current Forge: unload_all_models() and nothing else
    assert [e[0] for e in memory_management.events] == ["unload_all_models"]
    assert memory_management.current_loaded_models == [] and shared.sd_model.device == "cpu"


def test_training_runs_with_forge_models_off_the_gpu(forge, probe):
    from backend import memory_management
    from modules import sd_models
    from modules_forge import main_thread

    assert _backend().run_unlearn(object()) == "result"
    assert probe["devices"] == {"unet": "cpu", "clip": "cpu", "vae": "cpu"}
    assert probe["loaded"] == [] and probe["events"] == ["unload_all_models", "soft_empty_cache"]
    events = memory_management.events
    assert [e[0] for e in events] == ["unload_all_models", "soft_empty_cache", "soft_empty_cache"]
    assert {e[1] for e in events} == {"forge-main-thread"}, "Forge's model work belongs on its main thread"
    assert all(e[2] for e in events), "the queue lock was not held"
    assert sd_models.events == []  # the A1111-era stubs are not relied on
    assert "work" in main_thread.calls


def test_forge_loads_the_model_back_for_its_next_generation(forge, probe):
    from backend import memory_management
    from modules import processing, shared

    _backend().run_unlearn(object())
    assert shared.sd_model.device == "cpu"
    objs = shared.sd_model.forge_objects
    processing.sd_models.forge_model_reload()
    memory_management.load_models_gpu([objs.unet])  # what Forge's sampler does first
    assert shared.sd_model.device == "cuda"


def test_the_cache_is_emptied_even_when_training_fails(forge, probe):
    from backend import memory_management

    probe["fail"] = True
    with pytest.raises(UserError, match="training failed"):
        _backend().run_unlearn(object())
    assert [e[0] for e in memory_management.events] == ["unload_all_models", "soft_empty_cache", "soft_empty_cache"]


def test_a1111_has_no_forge_memory_module(tmp_path, monkeypatch):
    _purge()
    monkeypatch.setenv("FAKE_WEBUI_DATA", str(tmp_path / "webui"))
    monkeypatch.syspath_prepend(str(HERE / "fake_a1111"))
    try:
        assert _backend()._forge_memory() is None
    finally:
        _purge()
