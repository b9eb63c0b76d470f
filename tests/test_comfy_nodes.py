"""The pack without ComfyUI: it registers light, its facts come from the header, and the workflows hang together.

Everything that needs ComfyUI's own code (LoRA patching, execution, serving) is in test_comfy_real.py, against a
real ComfyUI: nothing here stands in for ComfyUI.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_root_package_registers_nodes_without_host_or_torch_imports():
    code = ("import sys, duo_unlearn as d; print(sorted(d.NODE_CLASS_MAPPINGS)); print(d.WEB_DIRECTORY); "
            "print([m for m in ('torch', 'folder_paths', 'comfy', 'server', 'diffusers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert eval(out[0]) == ["DUOAdapterInfo", "DUOApplyAdapter", "DUOCompareImages", "DUOLoraLoader",
                            "DUOLoraStack", "DUOUnlearn"]
    core = {"LoraLoader", "LoraLoaderModelOnly", "TrainLoraNode", "SaveLoRA", "LoraModelLoader"}
    assert not core & set(eval(out[0]))
    web = (REPO / out[1]).resolve()
    assert web.parent == (REPO / "javascript").resolve() and (web / "duo_unlearn.js").exists()
    assert eval(out[2]) == []  # ComfyUI imports the pack at start-up: nothing heavy may load then


def test_facts_come_from_the_header(tmp_path, tiny_model, pair_dir):
    from duo_unlearn.nodes.facts import base_model_matches, read_facts, summary
    from duo_unlearn.trainer.config import LoraConfig, TrainConfig
    from duo_unlearn.trainer.train import train

    out = tmp_path / "red.safetensors"
    train(TrainConfig(pairs=str(pair_dir), model=str(tiny_model), out=str(out), steps=1, concept="red",
                      lora=LoraConfig(rank=4, alpha=4)))
    info = read_facts(out)
    assert info["is_duo"] and info["facts"]["concept"] == "red" and info["facts"]["steps"] == 1
    text = summary("red.safetensors", info, "model.safetensors")
    assert "concept: red" in text and "beta: 500" in text and "matches model.safetensors: yes" in text
    assert base_model_matches(info["facts"], "other.ckpt") is False and base_model_matches({}, "x") is None


@pytest.mark.parametrize("path", sorted((REPO / "example_workflows").glob("*.json")), ids=lambda p: p.stem)
def test_example_workflows_link_existing_slots(path):
    wf = json.loads(path.read_text())
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert wf["version"] == 0.4 and wf["last_link_id"] == len(wf["links"])
    for link_id, src, src_slot, dst, dst_slot, kind in wf["links"]:
        assert nodes[src]["outputs"][src_slot]["type"] == kind and link_id in nodes[src]["outputs"][src_slot]["links"]
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id
    assert any(n["type"].startswith("DUO") for n in wf["nodes"])


def test_unlearn_node_passes_runtime_widgets_into_the_config(tmp_path, monkeypatch):
    """mixed_precision, gradient_checkpointing and resolution reach UnlearnConfig; IS_CHANGED follows them; the host
    services ComfyUI provides are replaced by folders here (the real ones run in test_comfy_real.py)."""
    import duo_unlearn.trainer.unlearn as unlearn_mod
    from duo_unlearn.nodes import host
    from duo_unlearn.nodes.unlearn_node import DUOUnlearn

    loras = tmp_path / "loras"
    loras.mkdir()
    monkeypatch.setattr(host, "loras_dir", lambda: loras)
    monkeypatch.setattr(host, "work_dir", lambda: tmp_path / "out")
    monkeypatch.setattr(host, "training_device", lambda: "cpu")
    monkeypatch.setattr(host, "free_gpu", lambda: None)
    monkeypatch.setattr(host, "ComfyProgress", lambda *a, **k: None)
    seen = {}

    def fake_unlearn(cfg, progress=None, model=None):
        seen["cfg"] = cfg
        raise RuntimeError("stop here")

    monkeypatch.setattr(unlearn_mod, "unlearn", fake_unlearn)
    args = dict(ckpt_name="testbed", preset="testbed-red", concept="", unsafe_prompts="", safe_prompts="",
                num_pairs=2, steps=2, beta=0.0, seed=0, lora_name="duo_x", overwrite=False, config_dir="")
    with pytest.raises(RuntimeError, match="stop here"):
        DUOUnlearn().unlearn(**args, mixed_precision="bf16", gradient_checkpointing="on", resolution=64)
    cfg = seen["cfg"]
    assert (cfg.mixed_precision, cfg.gradient_checkpointing, cfg.resolution, cfg.device) == ("bf16", "on", 64, "cpu")
    with pytest.raises(RuntimeError, match="stop here"):
        DUOUnlearn().unlearn(**args)  # a graph saved before the widgets existed: the defaults
    cfg = seen["cfg"]
    assert (cfg.mixed_precision, cfg.gradient_checkpointing, cfg.resolution) == ("auto", "auto", None)
    same = DUOUnlearn.IS_CHANGED(**args, resolution=0)
    assert same == DUOUnlearn.IS_CHANGED(**args, resolution=0) != DUOUnlearn.IS_CHANGED(**args, resolution=64)
