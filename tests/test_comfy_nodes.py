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



def _cpu_host(monkeypatch, host, tmp_path):
    """ComfyUI's host functions as a CPU-only ComfyUI with its loras folder under tmp_path; returns that folder."""
    loras = tmp_path / "loras"
    loras.mkdir()
    monkeypatch.setattr(host, "loras_dir", lambda: loras)
    monkeypatch.setattr(host, "work_dir", lambda: tmp_path / "out")
    monkeypatch.setattr(host, "training_device", lambda: "cpu")
    monkeypatch.setattr(host, "free_gpu", lambda: None)
    monkeypatch.setattr(host, "ComfyProgress", lambda *a, **k: None)
    return loras

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

    loras = _cpu_host(monkeypatch, host, tmp_path)
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
    assert cfg.overwrite is False and cfg.twin_negative is None  # None: the preset's negative, the paper's
    with pytest.raises(RuntimeError, match="stop here"):
        DUOUnlearn().unlearn(**args, twin_negative="  red ")
    assert seen["cfg"].twin_negative == "red"
    with pytest.raises(RuntimeError, match="stop here"):
        DUOUnlearn().unlearn(**args, twin_negative="   ")  # blank: the preset's again
    assert seen["cfg"].twin_negative is None
    assert DUOUnlearn.IS_CHANGED(**args) != DUOUnlearn.IS_CHANGED(**args, twin_negative="red")
    with pytest.raises(RuntimeError, match="stop here"):
        DUOUnlearn().unlearn(**{**args, "overwrite": True})  # the switch reaches the trainer, which checks it again
    assert seen["cfg"].overwrite is True
    (loras / "duo_x.preview.png").write_bytes(b"mine")  # left beside a deleted adapter: refused in the node's words
    from duo_unlearn.trainer.errors import UserError

    with pytest.raises(UserError, match="duo_x.preview.png already exists in models/loras; .*switch overwrite on"):
        DUOUnlearn().unlearn(**args)
    with pytest.raises(RuntimeError, match="stop here"):
        DUOUnlearn().unlearn(**{**args, "overwrite": True})
    (loras / "duo_x.preview.png").unlink()
    same = DUOUnlearn.IS_CHANGED(**args, resolution=0)
    assert same == DUOUnlearn.IS_CHANGED(**args, resolution=0) != DUOUnlearn.IS_CHANGED(**args, resolution=64)


def test_unlearn_node_lists_the_test_beds_by_name_and_trains_on_them(tmp_path, monkeypatch):
    """The checkpoint list starts with every bundled test bed whose weights are present (testbed-xl among them;
    testbed-sd3 only once its folder exists); choosing one hands its name to the trainer, with no config folder."""
    import duo_unlearn.trainer.unlearn as unlearn_mod
    from duo_unlearn.nodes import host, unlearn_node
    from duo_unlearn.nodes.unlearn_node import DUOUnlearn, _same_training
    from duo_unlearn.trainer.testbed import TESTBEDS
    from duo_unlearn.trainer.unlearn import UnlearnConfig, plan

    monkeypatch.setattr(host, "checkpoint_names", lambda: ["sd_xl_base_1.0.safetensors"])
    monkeypatch.setitem(TESTBEDS, "testbed-sd3", tmp_path / "no_sd3")
    required = DUOUnlearn.INPUT_TYPES()["required"]
    assert required["ckpt_name"][0] == ["testbed", "testbed-xl", "sd_xl_base_1.0.safetensors"]
    assert "'testbed-xl' (SDXL)" in required["ckpt_name"][1]["tooltip"]
    sd3 = tmp_path / "sd3"
    sd3.mkdir()
    (sd3 / "model_index.json").write_text("{}")
    monkeypatch.setitem(TESTBEDS, "testbed-sd3", sd3)
    assert DUOUnlearn.INPUT_TYPES()["required"]["ckpt_name"][0][:3] == ["testbed", "testbed-xl", "testbed-sd3"]

    loras = _cpu_host(monkeypatch, host, tmp_path)
    monkeypatch.setattr(host, "checkpoint_path", lambda name: pytest.fail(f"{name} looked up among checkpoints"))
    seen = {}

    def fake_unlearn(cfg, progress=None, model=None):
        seen["cfg"] = cfg
        raise RuntimeError("stop here")

    monkeypatch.setattr(unlearn_mod, "unlearn", fake_unlearn)
    with pytest.raises(RuntimeError, match="stop here"):
        DUOUnlearn().unlearn(ckpt_name="testbed-xl", preset="testbed-red", concept="", unsafe_prompts="",
                             safe_prompts="", num_pairs=2, steps=2, beta=0.0, seed=0, lora_name="duo_xl",
                             overwrite=False, config_dir="")
    assert seen["cfg"].model == "testbed-xl" and seen["cfg"].config_dir is None
    # an adapter already trained on testbed-xl with these settings is reused (its facts name the test bed)
    _, plans = plan(UnlearnConfig(preset="testbed-red", out=str(loras / "duo_xl.safetensors"), model="testbed-xl"))
    t = plans[0].train
    facts = {"preset": "testbed-red", "concept": "red", "beta": 9.3, "kappa": t.kappa, "steps": 225,
             "seed": 0, "base_model": "testbed-xl", "method": "duo",
             "lambda_retain": t.lam_retain, "retain_images": plans[0].pairs.num_retain,
             "unsafe_prompts": [], "safe_prompts": [],  # the SDXL table's erasure check, as train records it
             "max_steps": t.steps, "stop_every": t.stop_every, "stop_erased": t.stop_erased,
             "on_policy_pairs": t.on_policy_pairs}
    assert t.stop_every and t.on_policy_pairs  # what the SDXL table asks for, and what this test checks below
    (loras / "duo_xl.safetensors").write_bytes(b"")
    monkeypatch.setattr(unlearn_node, "read_facts", lambda path: {"facts": facts})
    assert _same_training(loras / "duo_xl.safetensors", plans[0], "testbed-red", "testbed-xl")
    assert not _same_training(loras / "duo_xl.safetensors", plans[0], "testbed-red", "testbed")
    facts["lambda_retain"] = 1.25  # SD 1.x's retain weight, not the SDXL table's: trained differently
    assert not _same_training(loras / "duo_xl.safetensors", plans[0], "testbed-red", "testbed-xl")
    facts["lambda_retain"] = plans[0].train.lam_retain
    facts["on_policy_pairs"] = False  # the same check without the preset's on-policy pairs: trained differently
    assert not _same_training(loras / "duo_xl.safetensors", plans[0], "testbed-red", "testbed-xl")
    facts["on_policy_pairs"] = True
    facts["kappa"] = 50.0  # the preset's κ changed since: trained differently, not reused
    assert not _same_training(loras / "duo_xl.safetensors", plans[0], "testbed-red", "testbed-xl")
    facts["kappa"] = t.kappa
    assert _same_training(loras / "duo_xl.safetensors", plans[0], "testbed-red", "testbed-xl")
    facts["twin_negative"] = "red"  # twins made with another negative prompt than this request's: other pairs
    assert not _same_training(loras / "duo_xl.safetensors", plans[0], "testbed-red", "testbed-xl")
    del facts["twin_negative"]
    facts["concept_directions"] = 24  # trained on the concept's directions, which this request does not ask for
    assert not _same_training(loras / "duo_xl.safetensors", plans[0], "testbed-red", "testbed-xl")


def test_node_inputs_a_widget_or_link_can_carry_are_refused_by_the_widgets_name(tmp_path, monkeypatch):
    """Custom prompts left empty, a config_dir that is a file, an empty lora_name link, images of two sizes and a
    non-finite strength on a link: one UserError naming the widget (the CLI's flags mean nothing in a graph)."""
    import torch

    import duo_unlearn.trainer.unlearn as unlearn_mod
    from duo_unlearn.nodes import adapter_nodes, host
    from duo_unlearn.nodes.unlearn_node import DUOUnlearn
    from duo_unlearn.trainer.errors import UserError

    _cpu_host(monkeypatch, host, tmp_path)
    monkeypatch.setattr(unlearn_mod, "unlearn", lambda *a, **k: pytest.fail("training started"))
    args = dict(ckpt_name="testbed", preset="custom", concept="", unsafe_prompts=" \n \n", safe_prompts="a blue square",
                num_pairs=2, steps=2, beta=0.0, seed=0, lora_name="duo_x", overwrite=False, config_dir="")
    with pytest.raises(UserError, match="unsafe_prompts is empty") as caught:
        DUOUnlearn().unlearn(**args)
    assert "--" not in str(caught.value)
    with pytest.raises(UserError, match="safe_prompts is empty"):
        DUOUnlearn().unlearn(**{**args, "unsafe_prompts": "a red square", "safe_prompts": ""})
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="config_dir .*notes.txt is a file"):
        DUOUnlearn().unlearn(**{**args, "preset": "testbed-red", "config_dir": str(tmp_path / "notes.txt")})

    with pytest.raises(UserError, match="lora_name is empty"):
        adapter_nodes.DUOApplyAdapter().apply(None, None, "  \n", 1.0, 1.0)
    with pytest.raises(UserError, match="differ in size"):
        adapter_nodes.DUOCompareImages().compare(torch.zeros(1, 8, 8, 3), torch.zeros(1, 16, 16, 3))
    with pytest.raises(UserError, match="strength_model of duo_x must be a finite number"):
        adapter_nodes.DUOLoraStack().stack(None, None, lora_1="duo_x", strength_1=float("nan"))


def test_unlearn_node_keeps_one_pair_folder_per_model_and_pair_settings(tmp_path, monkeypatch):
    """The node has no widget for the pair folder: a changed seed or model gets a folder of its own (not "holds
    pairs made with other settings", which a graph user cannot act on, nor another model's pairs); the same inputs
    get the same folder, so a cancelled run resumes."""
    import duo_unlearn.trainer.unlearn as unlearn_mod
    from duo_unlearn.nodes import host
    from duo_unlearn.nodes.unlearn_node import DUOUnlearn

    _cpu_host(monkeypatch, host, tmp_path)
    folders = []

    def fake_unlearn(cfg, progress=None, model=None):
        folders.append(Path(cfg.pairs_dir))
        raise RuntimeError("stop here")

    monkeypatch.setattr(unlearn_mod, "unlearn", fake_unlearn)
    args = dict(ckpt_name="testbed", preset="testbed-red", concept="", unsafe_prompts="", safe_prompts="",
                num_pairs=2, steps=2, beta=0.0, seed=0, lora_name="duo_x", overwrite=False, config_dir="")
    for change in ({}, {}, {"seed": 1}, {"ckpt_name": "testbed-xl"}, {"num_pairs": 3}, {"steps": 5},
                   {"twin_negative": "red"}, {"twin_negative": "{unsafe}"}):
        with pytest.raises(RuntimeError, match="stop here"):
            DUOUnlearn().unlearn(**{**args, **change})
    same, again, seed, model, pairs, steps, negative, papers = folders
    assert same == again == steps == papers  # training steps do not shape the pairs; "{unsafe}" is the default
    assert len({same, seed, model, pairs, negative}) == 5
    assert all(f.parent == tmp_path / "out" and f.name.startswith("duo_x-") for f in folders)


def test_unlearn_node_words_name_its_widgets_and_a_full_card_is_one_line(tmp_path, monkeypatch):
    """A bad lora_name is said by the widget's name; a FLOAT linked into resolution is not cut to a whole number;
    a GPU that runs out of memory is the CLI's and tab's one line, not torch's paragraph."""
    import torch

    import duo_unlearn.trainer.unlearn as unlearn_mod
    from duo_unlearn.nodes import host
    from duo_unlearn.nodes.unlearn_node import DUOUnlearn
    from duo_unlearn.trainer.errors import UserError

    _cpu_host(monkeypatch, host, tmp_path)
    args = dict(ckpt_name="testbed", preset="testbed-red", concept="", unsafe_prompts="", safe_prompts="",
                num_pairs=2, steps=2, beta=0.0, seed=0, lora_name="duo_x", overwrite=False, config_dir="")
    monkeypatch.setattr(unlearn_mod, "unlearn", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(UserError, match="^lora_name '../x' points into another folder"):
        DUOUnlearn().unlearn(**{**args, "lora_name": "../x"})
    with pytest.raises(UserError, match="resolution must be a whole number of pixels .*got 64.5"):
        DUOUnlearn().unlearn(**args, resolution=64.5)

    def out_of_memory(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 122.00 MiB. GPU 0 has a total capacity "
                                     "of 11.99 GiB of which 20.00 MiB is free.\nIf reserved but unallocated ...")
    monkeypatch.setattr(unlearn_mod, "unlearn", out_of_memory)
    with pytest.raises(UserError) as caught:
        DUOUnlearn().unlearn(**args)
    assert str(caught.value).startswith("out of GPU memory asking for 122.00 MiB more") and "\n" not in str(caught.value)
