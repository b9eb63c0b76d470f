"""The A1111/Forge adapter against a fake `modules` package with the web UI's signatures (tests/fake_a1111):
the shim registers on_ui_tabs, the callback builds the tab, training frees and restores the host's model under the
queue lock, and Compare goes through the host's txt2img with <lora:name:weight>."""
import importlib.util
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from duo_unlearn.trainer.errors import UserError

HERE = Path(__file__).resolve().parent
SHIM = HERE.parent / "scripts" / "duo_unlearn_tab.py"


def _purge():
    for key in [k for k in sys.modules if k.split(".")[0] in ("modules", "modules_forge", "backend", "duo_unlearn_tab_script")]:
        del sys.modules[key]


@pytest.fixture(params=["a1111", "forge"])
def webui(request, tmp_path, tiny_model, monkeypatch):
    """A fake web UI with the tiny model as its selected checkpoint and --lora-dir pointing at tmp/MyLoras."""
    _purge()
    monkeypatch.setenv("FAKE_WEBUI_DATA", str(tmp_path / "webui"))
    monkeypatch.syspath_prepend(str(HERE / "fake_a1111"))
    if request.param == "forge":  # Forge's modules.sd_models/processing and backend/ over the A1111 fake
        monkeypatch.syspath_prepend(str(HERE / "fake_forge"))
    from modules import sd_models, shared

    sd_models.register(str(tiny_model))
    shared.cmd_opts.lora_dir = str(tmp_path / "MyLoras")
    (tmp_path / "MyLoras").mkdir()
    spec = importlib.util.spec_from_file_location("duo_unlearn_tab_script", SHIM)  # as script_loading.load_module
    shim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shim)
    yield request.param
    _purge()


def _host_moves(webui):
    """(what freed and restored the host's model, when, on which thread, under the queue lock?) per host: A1111's
    sd_models functions, Forge's backend.memory_management (its sd_models reload/send are empty stubs)."""
    if webui == "forge":
        from backend import memory_management

        return memory_management.events
    from modules import sd_models

    return sd_models.events


EXPECTED_MOVES = {"a1111": ["unload_model_weights", "reload_model_weights", "send_model_to_device"],
                  "forge": ["unload_all_models", "soft_empty_cache", "soft_empty_cache"]}


def _tab():
    from modules import script_callbacks

    tabs = script_callbacks.ui_tabs_callback()
    assert script_callbacks.errors == [], script_callbacks.errors[0]
    return tabs


def test_on_ui_tabs_builds_the_tab(webui, tmp_path):
    import gradio as gr
    from modules import script_callbacks

    assert len(script_callbacks.callback_map["callbacks_ui_tabs"]) == 1
    tabs = _tab()
    assert len(tabs) == 1
    blocks, title, elem_id = tabs[0]
    assert isinstance(blocks, gr.Blocks) and title == "DUO Unlearn" and elem_id == "duo_unlearn"
    c = blocks.duo_components
    backend = c["controller"].backend
    assert type(backend).__name__ == "A1111Backend"
    assert backend.lora_dir == tmp_path / "MyLoras"  # --lora-dir wins over models/Lora
    assert backend.work_dir == tmp_path / "webui" / "outputs" / "duo-unlearn"
    assert c["model"].value.startswith("model [") and c["model"].interactive is False


def _inputs(**over):
    values = dict(model="ignored: the host's checkpoint is used", preset="testbed-red", concept="red",
                  unsafe="a red square", safe="a blue square", num_pairs=2, beta=500, steps=3, rank=2,
                  out_name="duo_red", strength=None, lr=0.05, seed=0, batch_pairs=2, detector="none", preview=False,
                  overwrite=False, config_dir="")
    values.update(over)
    return list(values.values())


@pytest.mark.slow
def test_training_frees_the_gpu_and_compare_uses_txt2img(webui, tmp_path, tiny_model):
    from modules import processing, sd_models, shared

    ctl = _tab()[0][0].duo_components["controller"]
    # a learning rate at which 3 steps change the compare image visibly: on the preset's eight convolutions (since the
    # fifty-first session) 0.05 moved no pixel by more than 2 levels
    job = ctl.start(*_inputs(lr=0.5))
    assert job.wait(120) and job.state == "done", job.error
    adapter = tmp_path / "MyLoras" / "duo_red.safetensors"
    assert adapter.exists() and job.result[0].adapter == adapter
    assert Path(job.request.cfg.model) == tiny_model  # trained on the selected checkpoint, not the text box
    moves = _host_moves(webui)
    assert [e[0] for e in moves] == EXPECTED_MOVES[webui]
    if webui == "a1111":
        unload, reload = sd_models.events[0], sd_models.events[1]
        assert unload[1] <= adapter.stat().st_mtime <= reload[1], "the adapter was written while the model was off"
        assert shared.sd_model.device == "cuda"
    else:
        from modules_forge import main_thread

        assert sd_models.events == [], "Forge's A1111-era stubs were called"
        assert shared.sd_model.device == "cpu"  # until Forge's next generation loads it back
        assert {e[1] for e in moves} == {"forge-main-thread"}
        assert main_thread.calls[:1] == ["work"]
    assert all(e[-1] for e in moves), "the queue lock was not held around the model moves"

    ctl.backend.list_adapters()
    from duo_unlearn.extension.tab import NONE

    base, adapted, note = ctl.compare("", "a red square", "", 7, 6, 5.0, "duo_red", 1.0, NONE, 1, NONE, 1, NONE, 1)
    assert [c["prompt"] for c in processing.calls] == ["a red square", "a red square <lora:duo_red:1>"]
    assert all(c["seed"] == 7 and c["steps"] == 6 and c["cfg_scale"] == 5.0 for c in processing.calls)
    assert all(c["do_not_save_samples"] and c["do_not_save_grid"] and c["queue_lock_held"] for c in processing.calls)
    assert all(c["model_device"] == "cuda" and c["state_job"] == "duo-unlearn compare" for c in processing.calls)
    assert [e[0] for e in shared.state.events] == ["begin", "end"]
    assert "<lora:duo_red:1>" in note
    assert np.abs(np.asarray(base, dtype=np.int16) - np.asarray(adapted, dtype=np.int16)).max() > 2
    if webui == "forge":
        assert {c["thread"] for c in processing.calls} == {"forge-main-thread"}


def _failing_trainer(monkeypatch):
    """Training that fails once the job runs (a bad detector is refused on the click now, before any job)."""
    import duo_unlearn.trainer.unlearn as unlearn_mod

    def fails(cfg, progress=None, model=None):
        raise UserError("the detector colour:nosuchcolour could not be built")

    monkeypatch.setattr(unlearn_mod, "unlearn", fails)


@pytest.mark.slow
def test_the_host_model_comes_back_when_training_fails(webui, tmp_path, monkeypatch):
    from modules import sd_models, shared

    _failing_trainer(monkeypatch)
    ctl = _tab()[0][0].duo_components["controller"]
    job = ctl.start(*_inputs())
    assert job.wait(60) and job.state == "failed" and "nosuchcolour" in job.error
    assert [e[0] for e in _host_moves(webui)] == EXPECTED_MOVES[webui]
    assert shared.sd_model.device == ("cuda" if webui == "a1111" else "cpu")  # Forge reloads on its next generation
    assert list((tmp_path / "MyLoras").iterdir()) == []


def test_training_waits_for_a_running_generation(webui, tmp_path, monkeypatch):
    from modules import call_queue, sd_models

    _failing_trainer(monkeypatch)
    ctl = _tab()[0][0].duo_components["controller"]
    call_queue.queue_lock.acquire()  # the web UI is generating
    try:
        job = ctl.start(*_inputs())
        assert not job.wait(0.5) and _host_moves(webui) == []
        assert "waiting for the web UI" in job.summary()
    finally:
        call_queue.queue_lock.release()
    assert job.wait(60) and [e[0] for e in _host_moves(webui)][0] == EXPECTED_MOVES[webui][0]


def test_no_checkpoint_selected_is_a_message(webui):
    from modules import sd_models

    ctl = _tab()[0][0].duo_components["controller"]
    sd_models.checkpoints_list.clear()
    with pytest.raises(UserError, match="no checkpoint is selected"):
        ctl.start(*_inputs())


def test_compare_refuses_an_adapter_of_another_family_than_the_hosts_checkpoint(webui, tmp_path):
    """In the host the model box holds the checkpoint's title ("model [hash]"), not a path: the family checked is
    the selected checkpoint's, so an SDXL adapter on the SD 1.x checkpoint is refused before txt2img runs."""
    import json

    import torch
    from modules import processing
    from safetensors.torch import save_file

    from duo_unlearn.extension.tab import NONE

    ctl = _tab()[0][0].duo_components["controller"]
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file({f"{key}.lora_down.weight": torch.zeros(2, 8), f"{key}.lora_up.weight": torch.zeros(8, 2)},
              str(tmp_path / "MyLoras" / "xl_red.safetensors"), metadata={"duo.family": json.dumps("sdxl")})
    ctl.backend.list_adapters()
    title = _tab()[0][0].duo_components["model"].value
    with pytest.raises(UserError, match="xl_red was trained for SDXL, and this model is SD 1.x"):
        ctl.compare(title, "a red square", "", 7, 2, 5.0, "xl_red", 1.0, NONE, 1, NONE, 1, NONE, 1)
    assert processing.calls == []
