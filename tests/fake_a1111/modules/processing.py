"""modules/processing.py (1.10): the StableDiffusionProcessing dataclass (its init fields, so a wrong keyword
fails as it would there), StableDiffusionProcessingTxt2Img, Processed and process_images."""
from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from typing import Any

from modules import call_queue, shared

calls = []  # what process_images saw
_pipes = {}
_LORA = re.compile(r"<lora:([^:>]+)(?::([-0-9.]+))?>")


@dataclass(repr=False)
class StableDiffusionProcessing:
    sd_model: object = None
    outpath_samples: str = None
    outpath_grids: str = None
    prompt: str = ""
    prompt_for_display: str = None
    negative_prompt: str = ""
    styles: list = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    seed_enable_extras: bool = True
    sampler_name: str = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool = None
    tiling: bool = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    extra_generation_params: dict[str, Any] = None
    overlay_images: list = None
    eta: float = None
    do_not_reload_embeddings: bool = False
    denoising_strength: float = 0
    ddim_discretize: str = None
    s_min_uncond: float = None
    s_churn: float = None
    s_tmax: float = None
    s_tmin: float = None
    s_noise: float = None
    override_settings: dict[str, Any] = None
    override_settings_restore_afterwards: bool = True
    sampler_index: int = None
    refiner_checkpoint: str = None
    refiner_switch_at: float = None
    disable_extra_networks: bool = False
    comments: dict = None

    def close(self):
        self.closed = True


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    enable_hr: bool = False
    denoising_strength: float = 0.75
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str = None
    hr_sampler_name: str = None
    hr_scheduler: str = None
    hr_prompt: str = ''
    hr_negative_prompt: str = ''


class Processed:
    def __init__(self, p, images_list, seed=-1, info="", subseed=None, all_prompts=None, all_negative_prompts=None,
                 all_seeds=None, all_subseeds=None, index_of_first_image=0, infotexts=None, comments=""):
        self.images = images_list
        self.prompt = p.prompt
        self.seed = seed
        self.info = info


def _find_lora(name):
    """extensions-builtin/Lora/networks.py: networks are found by file stem anywhere under --lora-dir."""
    for root, _, files in os.walk(shared.cmd_opts.lora_dir):
        for f in files:
            if os.path.splitext(f)[0] == name and f.endswith((".safetensors", ".pt", ".ckpt")):
                return os.path.join(root, f)
    return None


def process_images(p: StableDiffusionProcessing) -> Processed:
    from diffusers import StableDiffusionPipeline
    import torch

    model = shared.sd_model
    calls.append({"prompt": p.prompt, "negative_prompt": p.negative_prompt, "seed": p.seed, "steps": p.steps,
                  "cfg_scale": p.cfg_scale, "width": p.width, "height": p.height,
                  "do_not_save_samples": p.do_not_save_samples, "do_not_save_grid": p.do_not_save_grid,
                  "queue_lock_held": call_queue.queue_lock.locked(), "model_device": model.device,
                  "thread": threading.current_thread().name, "state_job": shared.state.job})
    if model.device != "cuda":
        raise RuntimeError("Expected all tensors to be on the same device (the model was left on the CPU)")
    path = model.sd_checkpoint_info.filename
    pipe = _pipes.get(path)
    if pipe is None:
        pipe = _pipes[path] = StableDiffusionPipeline.from_pretrained(path, safety_checker=None,
                                                                      requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
    tags = _LORA.findall(p.prompt)
    prompt = _LORA.sub("", p.prompt).strip()
    names = []
    try:
        for k, (name, weight) in enumerate(tags):
            file = _find_lora(name)
            if file is None:
                continue  # the web UI prints "Lora not found" and goes on without it
            pipe.load_lora_weights(file, adapter_name=f"n{k}")
            names.append((f"n{k}", float(weight or 1.0)))
        if names:
            pipe.set_adapters([n for n, _ in names], [w for _, w in names])
        # the width/height the web UI would use are recorded above; the tiny test model renders at its own size
        image = pipe(prompt, negative_prompt=p.negative_prompt or None, num_inference_steps=p.steps,
                     guidance_scale=p.cfg_scale, generator=torch.Generator().manual_seed(p.seed)).images[0]
    finally:
        if names:
            pipe.unload_lora_weights()
    return Processed(p, [image], p.seed, "")
