"""Regenerate example_workflows/*.json from the live node definitions of a real ComfyUI (widget order included).

    python tests/comfy_make_workflows.py     (uses COMFYUI_DIR or ../shared/comfyui-src and the test venv)
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from comfy_env import REPO, comfyui_dir  # noqa: E402
from comfy_workflows import ui_workflow  # noqa: E402

CKPT = "v1-5-pruned-emaonly.safetensors"  # what most SD 1.5 users have; pick yours in the loader
SAMPLER = {"seed": 42, "steps": 25, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}


def sample(nid, x, model, pos, neg, latent, vae, title):
    return {
        nid: {"type": "KSampler", "pos": [x, 420], "size": [300, 262], "values": SAMPLER, "title": f"KSampler ({title})",
              "links": {"model": model, "positive": pos, "negative": neg, "latent_image": latent}},
        nid + 1: {"type": "VAEDecode", "pos": [x, 720], "size": [200, 50], "links": {"samples": (nid, 0), "vae": vae}},
    }


def unlearn_then_compare():
    g = {
        1: {"type": "CheckpointLoaderSimple", "pos": [0, 40], "size": [320, 100], "values": {"ckpt_name": CKPT}},
        2: {"type": "DUOUnlearn", "pos": [0, 200], "size": [360, 640], "values": {
            "ckpt_name": CKPT, "preset": "custom", "concept": "van_gogh",
            "unsafe_prompts": "a painting in the style of Van Gogh\na starry night over a village, Van Gogh style",
            "safe_prompts": "a painting\na starry night over a village", "num_pairs": 32, "steps": 1000, "beta": 0.0,
            "seed": 0, "lora_name": "duo_van_gogh", "overwrite": False, "config_dir": ""}},
        3: {"type": "DUOApplyAdapter", "pos": [420, 40], "size": [300, 130], "values": {"strength_model": 1.0,
            "strength_clip": 1.0}, "links": {"model": (1, 0), "clip": (1, 1), "lora_name": (2, 0)}},
        4: {"type": "CLIPTextEncode", "pos": [420, 220], "size": [300, 90], "values": {
            "text": "a starry night over a village, Van Gogh style"}, "links": {"clip": (1, 1)}},
        5: {"type": "CLIPTextEncode", "pos": [420, 330], "size": [300, 90], "values": {"text": "blurry"},
            "links": {"clip": (1, 1)}},
        6: {"type": "EmptyLatentImage", "pos": [760, 40], "size": [300, 110], "values": {"width": 512, "height": 512,
            "batch_size": 1}},
    }
    g.update(sample(7, 760, (1, 0), (4, 0), (5, 0), (6, 0), (1, 2), "base"))
    g.update(sample(9, 1100, (3, 0), (4, 0), (5, 0), (6, 0), (1, 2), "unlearned, same seed"))
    g[11] = {"type": "DUOCompareImages", "pos": [1440, 40], "size": [420, 420],
             "links": {"base": (8, 0), "unlearned": (10, 0)}}
    g[12] = {"type": "PreviewImage", "pos": [1440, 500], "size": [420, 300], "links": {"images": (2, 1)},
             "title": "Trainer's preview (base | unlearned)"}
    g[13] = {"type": "PreviewAny", "pos": [1900, 40], "size": [320, 240], "links": {"source": (2, 2)},
             "title": "What was trained"}
    note = ("**Unlearn a concept, then compare.** DUO Unlearn makes concept/no-concept image pairs with your "
            "checkpoint and trains a DUO LoRA (saved in models/loras). Both KSamplers use the same seed: the left "
            "image is the base model, the right one the model with the adapter. A single-file checkpoint needs a "
            "diffusers folder of the same family in models/diffusers (or `config_dir`). Training takes a while on a GPU; "
            "re-running the graph reuses the adapter.")
    return ui_workflow(g, INFO, [(note, [0, -200])])


def stack_violence():
    names = [f"duo_violence_{c}.safetensors" for c in ("blood", "suffering", "gun", "horror")]
    g = {
        1: {"type": "CheckpointLoaderSimple", "pos": [0, 40], "size": [320, 100], "values": {"ckpt_name": CKPT}},
        2: {"type": "DUOLoraStack", "pos": [380, 40], "size": [340, 330], "links": {"model": (1, 0), "clip": (1, 1)},
            "values": {**{f"lora_{i + 1}": n for i, n in enumerate(names)},
                       **{f"strength_{i + 1}": 1.0 for i in range(4)}}},
        3: {"type": "CLIPTextEncode", "pos": [380, 420], "size": [300, 90], "values": {
            "text": "a man in a dark alley, realistic photo, bleeding, with a gun"}, "links": {"clip": (2, 1)}},
        4: {"type": "CLIPTextEncode", "pos": [380, 540], "size": [300, 90], "values": {"text": ""},
            "links": {"clip": (2, 1)}},
        5: {"type": "EmptyLatentImage", "pos": [0, 200], "size": [300, 110], "values": {"width": 512, "height": 512,
            "batch_size": 1}},
        8: {"type": "PreviewAny", "pos": [780, 420], "size": [320, 200], "links": {"source": (2, 2)},
            "title": "Stacked adapters"},
    }
    g.update(sample(6, 780, (2, 0), (3, 0), (4, 0), (5, 0), (1, 2), "four violence adapters"))
    g[9] = {"type": "SaveImage", "pos": [1120, 40], "size": [320, 320], "values": {"filename_prefix": "duo_violence"},
            "links": {"images": (7, 0)}}
    note = ("**Stack the four violence adapters.** Train them once with `duo-unlearn unlearn --preset violence "
            "--model YOUR.safetensors --out duo_violence.safetensors` (or DUO Unlearn with preset violence and "
            "lora_name duo_violence): that writes duo_violence_blood/_suffering/_gun/_horror.safetensors. "
            "DUO Stack Adapters applies them like four chained LoraLoaders.")
    return ui_workflow(g, INFO, [(note, [0, -200])])


def testbed_demo():
    g = {
        1: {"type": "DUOUnlearn", "pos": [0, 40], "size": [360, 640], "values": {
            "ckpt_name": "testbed", "preset": "testbed-red", "concept": "", "unsafe_prompts": "", "safe_prompts": "",
            "num_pairs": 8, "steps": 60, "beta": 0.0, "seed": 0, "lora_name": "duo_testbed_red", "overwrite": False,
            "config_dir": ""}},
        2: {"type": "PreviewImage", "pos": [420, 40], "size": [420, 420], "links": {"images": (1, 1)},
            "title": "base | unlearned (red prompts, then unrelated ones)"},
        3: {"type": "PreviewAny", "pos": [880, 40], "size": [320, 300], "links": {"source": (1, 2)},
            "title": "What was trained"},
    }
    note = ("**CPU demo: unlearn red from the bundled test-bed model.** No checkpoint or GPU needed: the test bed is "
            "a tiny shapes-and-colours text-to-image model shipped with the pack. 8 pairs and 60 steps take about a "
            "minute on a laptop CPU; the preset's full recipe (32 pairs, trained until red is gone from its check "
            "samples: 300 steps at seed 0, at most 900) removes red at most seeds.")
    return ui_workflow(g, INFO, [(note, [0, -200])])


WORKFLOWS = {"duo_unlearn_then_compare": unlearn_then_compare, "duo_stack_violence_adapters": stack_violence,
             "duo_testbed_cpu_demo": testbed_demo}

if __name__ == "__main__":
    from comfy_server import ComfyServer

    server = ComfyServer(comfyui_dir(), Path(tempfile.mkdtemp())).start()
    try:
        INFO = server.get("/object_info")
    finally:
        server.stop()
    out = REPO / "example_workflows"
    out.mkdir(exist_ok=True)
    for name, make in WORKFLOWS.items():
        (out / f"{name}.json").write_text(json.dumps(make(), indent=1) + "\n")
        print("wrote", out / f"{name}.json")
