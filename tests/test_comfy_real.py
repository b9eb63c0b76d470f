"""The pack inside real ComfyUI (a source tree: COMFYUI_DIR, else ../shared/comfyui-src): loading, graphs, web files.

ComfyUI runs in its own venv (tests/comfy_env.py, cached in tests/.venvs/comfyui) as a server on 127.0.0.1 --cpu, with
this repository symlinked into custom_nodes/ exactly as a clone would sit there.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from comfy_env import REPO, comfyui_dir

pytestmark = pytest.mark.slow
WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))
ADAPTER = "duo_cat.safetensors"


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    source = comfyui_dir()
    if source is None or not (source / "main.py").exists():
        pytest.skip("no ComfyUI source tree: set COMFYUI_DIR (or put one at ../shared/comfyui-src) to run these")
    from comfy_server import ComfyServer

    server = ComfyServer(source, tmp_path_factory.mktemp("comfy")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def trained(comfy):
    """DUO Unlearn run in a graph on the tiny SD 1.5 checkpoint: pairs, training, adapter in models/loras."""
    started = time.time()
    entry = comfy.run(unlearn_prompt())
    return {"entry": entry, "seconds": time.time() - started, "path": comfy.loras / ADAPTER}


def unlearn_prompt(lora_name="duo_cat"):
    return {
        "1": {"class_type": "DUOUnlearn", "inputs": {
            "ckpt_name": "tiny_sd15.safetensors", "preset": "custom", "concept": "cat", "unsafe_prompts": "a cat",
            "safe_prompts": "a dog", "num_pairs": 1, "steps": 2, "beta": 0.0, "seed": 0, "lora_name": lora_name,
            "overwrite": False, "config_dir": ""}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 1]}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["1", 2]}},
    }


def test_pack_loads_as_a_custom_node(comfy):
    info = comfy.get("/object_info")
    ours = {"DUOUnlearn", "DUOLoraLoader", "DUOApplyAdapter", "DUOLoraStack", "DUOAdapterInfo", "DUOCompareImages"}
    assert ours <= set(info)
    assert "LoraLoader" in info and "CheckpointLoaderSimple" in info  # core nodes are intact beside ours
    assert "IMPORT FAILED" not in "\n".join(l for l in comfy.log().splitlines() if "duo_unlearn" in l)
    from duo_unlearn.trainer.testbed import available_testbeds

    assert "testbed-xl" in available_testbeds()  # the test beds by name first, then ComfyUI's checkpoints
    assert info["DUOUnlearn"]["input"]["required"]["ckpt_name"][0] == available_testbeds() + ["tiny_sd15.safetensors"]


def test_web_files_routes_and_templates_are_served(comfy):
    for rel in ("duo_unlearn.js",):
        status, body = comfy.request(f"/extensions/duo_unlearn/{rel}")
        assert status == 200 and body == (REPO / "javascript" / "comfyui" / rel).read_bytes()
    status, _ = comfy.request("/extensions/duo_unlearn/../duo_unlearn.js")  # the A1111 file is not ComfyUI's
    assert status != 200 or _ != (REPO / "javascript" / "duo_unlearn.js").read_bytes()
    listed = json.dumps(comfy.get("/extensions"))
    assert "/extensions/duo_unlearn/duo_unlearn.js" in listed
    templates = comfy.get("/workflow_templates")
    assert sorted(templates["duo_unlearn"]) == sorted(p.stem for p in WORKFLOWS)
    for name in ("../../models/checkpoints/tiny_sd15.safetensors", "nope.safetensors", ""):
        status, body = comfy.request(f"/duo_unlearn/adapter_facts?name={name}")
        assert status == 404 and "error" in json.loads(body)


def test_unlearn_node_writes_a_loadable_adapter_and_does_not_retrain(comfy, trained):
    path = trained["path"]
    assert path.exists(), comfy.log()[-3000:]
    tensors = load_file(str(path))
    assert tensors and all(k.startswith("lora_unet_") for k in tensors)
    outputs = trained["entry"]["outputs"]
    assert any("concept: cat" in t for t in outputs["1"]["text"])  # the facts, shown on the node
    assert outputs["2"]["images"]  # the preview IMAGE reached PreviewImage
    # immediately selectable by the loaders, and its facts are served to the front-end
    loader = comfy.get("/object_info/DUOLoraLoader")["DUOLoraLoader"]
    assert ADAPTER in loader["input"]["required"]["lora_name"][0]
    facts = comfy.get(f"/duo_unlearn/adapter_facts?name={ADAPTER}&ckpt=tiny_sd15.safetensors")
    assert facts["is_duo"] and facts["facts"]["concept"] == "cat" and facts["facts"]["steps"] == 2
    assert facts["matches_checkpoint"] is True
    other = comfy.get(f"/duo_unlearn/adapter_facts?name={ADAPTER}&ckpt=other.safetensors")
    assert other["matches_checkpoint"] is False
    # the same graph again: no retraining (the adapter file is untouched)
    mtime = path.stat().st_mtime_ns
    started = time.time()
    comfy.run(unlearn_prompt())
    assert path.stat().st_mtime_ns == mtime and time.time() - started < trained["seconds"]
    # another name that exists, trained differently, is refused without the overwrite switch
    with pytest.raises(AssertionError, match="already exists"):
        prompt = unlearn_prompt()
        prompt["1"]["inputs"]["steps"] = 3
        comfy.run(prompt)
    assert path.stat().st_mtime_ns == mtime


def _sampling_graph():
    """base / core LoraLoader / DUO Load Adapter / two chained LoraLoaders / DUO Stack, one seed, latents saved."""
    g = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
         "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a cat"}},
         "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": ""}},
         "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
         "core": {"class_type": "LoraLoader", "inputs": {"model": ["ckpt", 0], "clip": ["ckpt", 1],
                  "lora_name": ADAPTER, "strength_model": 40.0, "strength_clip": 1.0}},
         "duo": {"class_type": "DUOLoraLoader", "inputs": {"model": ["ckpt", 0], "clip": ["ckpt", 1],
                 "lora_name": ADAPTER, "strength_model": 40.0, "strength_clip": 1.0}},
         "chain1": {"class_type": "LoraLoader", "inputs": {"model": ["ckpt", 0], "clip": ["ckpt", 1],
                    "lora_name": ADAPTER, "strength_model": 30.0, "strength_clip": 30.0}},
         "chain2": {"class_type": "LoraLoader", "inputs": {"model": ["chain1", 0], "clip": ["chain1", 1],
                    "lora_name": "duo_cat_copy.safetensors", "strength_model": -10.0, "strength_clip": -10.0}},
         "stack": {"class_type": "DUOLoraStack", "inputs": {"model": ["ckpt", 0], "clip": ["ckpt", 1],
                   "lora_1": ADAPTER, "strength_1": 30.0, "lora_2": "None", "strength_2": 1.0,
                   "lora_3": "duo_cat_copy.safetensors", "strength_3": -10.0, "lora_4": "None", "strength_4": 1.0}}}
    for name, model in (("base", ["ckpt", 0]), ("core", ["core", 0]), ("duo", ["duo", 0]), ("chain", ["chain2", 0]),
                        ("stack", ["stack", 0])):
        g[f"k_{name}"] = {"class_type": "KSampler", "inputs": {
            "model": model, "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
            "seed": 7, "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
        g[f"s_{name}"] = {"class_type": "SaveLatent", "inputs": {"samples": [f"k_{name}", 0],
                                                                 "filename_prefix": f"latents/{name}"}}
    g["dec_base"] = {"class_type": "VAEDecode", "inputs": {"samples": ["k_base", 0], "vae": ["ckpt", 2]}}
    g["dec_duo"] = {"class_type": "VAEDecode", "inputs": {"samples": ["k_duo", 0], "vae": ["ckpt", 2]}}
    g["compare"] = {"class_type": "DUOCompareImages", "inputs": {"base": ["dec_base", 0], "unlearned": ["dec_duo", 0]}}
    g["info"] = {"class_type": "DUOAdapterInfo", "inputs": {"lora_name": ADAPTER}}
    # the same adapter as a .pt file, which ComfyUI lists and core LoraLoader loads: DUO's loader loads it too
    g["pt_core"] = {"class_type": "LoraLoader", "inputs": {"model": ["ckpt", 0], "clip": ["ckpt", 1],
                    "lora_name": "duo_cat.pt", "strength_model": 20.0, "strength_clip": 1.0}}
    g["pt_duo"] = {"class_type": "DUOLoraLoader", "inputs": {"model": ["ckpt", 0], "clip": ["ckpt", 1],
                   "lora_name": "duo_cat.pt", "strength_model": 20.0, "strength_clip": 1.0}}
    for name in ("pt_core", "pt_duo"):
        g[f"k_{name}"] = {**g["k_base"], "inputs": {**g["k_base"]["inputs"], "model": [name, 0]}}
        g[f"s_{name}"] = {"class_type": "SaveLatent", "inputs": {"samples": [f"k_{name}", 0],
                                                                 "filename_prefix": f"latents/{name}"}}
    g["info_pt"] = {"class_type": "DUOAdapterInfo", "inputs": {"lora_name": "duo_cat.pt"}}
    return g


def test_duo_loaders_equal_core_lora_loaders_bit_for_bit(comfy, trained):
    # the copy lives elsewhere and is linked into models/loras, as users share a LoRA library between UIs
    library = comfy.root / "shared_lora_library"
    library.mkdir(exist_ok=True)
    (library / "duo_cat_copy.safetensors").write_bytes(trained["path"].read_bytes())
    (comfy.loras / "duo_cat_copy.safetensors").symlink_to(library / "duo_cat_copy.safetensors")
    torch.save(load_file(str(trained["path"])), comfy.loras / "duo_cat.pt")
    log_before = len(comfy.log())
    entry = comfy.run(_sampling_graph())
    out = comfy.root / "output" / "latents"

    def latent(name):
        (f,) = sorted(out.glob(f"{name}_*.latent"))
        return load_file(str(f))["latent_tensor"]

    base, core, duo = latent("base"), latent("core"), latent("duo")
    assert not torch.equal(base, core)  # the adapter does act: equality below is not trivial
    assert torch.equal(core, duo)
    assert torch.equal(latent("chain"), latent("stack")) and not torch.equal(latent("chain"), core)
    assert torch.equal(latent("pt_core"), latent("pt_duo")) and not torch.equal(latent("pt_duo"), base)
    assert "lora key not loaded" not in comfy.log()[log_before:]  # 0 keys dropped by ComfyUI's LoRA mapping
    outputs = entry["outputs"]
    assert "concept: cat" in outputs["info"]["text"][0]
    assert outputs["info_pt"]["text"][0] == "duo_cat.pt: not a DUO adapter (no duo.* metadata)"
    assert [p["role"] for p in outputs["compare"]["duo_compare"]] == ["base", "unlearned"]
    for p in outputs["compare"]["duo_compare"]:
        status, body = comfy.request(f"/view?filename={p['filename']}&type=temp")
        assert status == 200 and body[:4] == b"\x89PNG"


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.stem)
def test_example_workflow_types_exist_and_links_agree(comfy, workflow):
    info = comfy.get("/object_info")
    from comfy_workflows import check_workflow

    problems = check_workflow(json.loads(workflow.read_text()), info)
    assert not problems, "\n".join(problems)


def test_interrupt_during_training_stops_the_job_and_writes_no_adapter(comfy):
    """ComfyUI's Cancel (POST /interrupt, what the queue's cancel button sends) while DUO Unlearn trains: the
    prompt ends as interrupted, soon, and neither an adapter nor a temporary file is left in models/loras."""
    prompt = unlearn_prompt("duo_cancelled")
    prompt["1"]["inputs"]["steps"] = 100000  # hours: only the interrupt can end it within the test
    marker = "[DUO] encoding pair images"
    seen = comfy.log().count(marker)  # earlier graphs of this server logged it too
    status, body = comfy.request("/prompt", {"prompt": prompt, "client_id": "duo-cancel-test"})
    assert status == 200, body
    prompt_id = json.loads(body)["prompt_id"]
    deadline = time.time() + 480  # pairs take ~1 min on an idle CPU; a loaded CI machine is much slower
    while comfy.log().count(marker) == seen:  # pairs are made and cached; the training comes next
        assert time.time() < deadline, comfy.log()[-3000:]
        assert prompt_id not in comfy.get(f"/history/{prompt_id}"), "the job ended before it could be cancelled"
        time.sleep(0.5)
    time.sleep(3)  # well into the training steps
    assert prompt_id not in comfy.get(f"/history/{prompt_id}")
    interrupted_at = time.time()
    assert comfy.request("/interrupt", {})[0] == 200
    while True:
        history = comfy.get(f"/history/{prompt_id}")
        if prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
            break
        assert time.time() - interrupted_at < 60, "the job did not stop after the interrupt"
        time.sleep(0.5)
    entry = history[prompt_id]
    events = [m[0] for m in entry["status"]["messages"]]
    assert entry["status"]["status_str"] == "error" and "execution_interrupted" in events, events
    assert "execution_error" not in events  # an interruption, not a crash
    assert not list(comfy.loras.glob("*duo_cancelled*")) and not list(comfy.loras.glob(".*"))
    assert not (comfy.loras / "duo_cancelled.safetensors").exists()
