"""Check, against a real ComfyUI checkout, that ComfyUI's LoRA loader recognises every module of a DUO adapter.

    python benchmarks/check_comfyui_keys.py --comfyui /path/to/ComfyUI [--adapter duo_adapter.safetensors]

Without --adapter the adapter is built here: a full-size SD1.5 UNet (diffusers, meta device), our LoRA added with
`add_lora(unet, TrainConfig())`, and the keys exported with `peft_to_kohya`. The ComfyUI side follows the LoraLoader
node: ComfyUI detects the model from the diffusers UNet's state dict (as when it loads a diffusers UNet), builds
its own SD1.5 model (on the meta device, so without weights), and `comfy.sd.load_lora_for_models` loads the adapter,
which uses `comfy.lora.model_lora_keys_unet` and `comfy.lora.load_lora`. Then each patch's weight delta, computed
by `comfy.lora.calculate_weight`, must have the shape of the ComfyUI weight it patches and equal
(alpha / rank) * up @ down. Exits 1 if any module is not recognised or not patched.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8)
SUFFIX = ".lora_down.weight"


def sd15_unet():
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        return UNet2DConditionModel(**SD15_UNET)


def our_adapter() -> dict:
    """kohya tensors as train.py exports them; LoRA weights are meta after add_lora, so give them real values."""
    from duo_unlearn.trainer.config import TrainConfig
    from duo_unlearn.trainer.export import peft_to_kohya
    from duo_unlearn.trainer.train import add_lora, lora_state

    cfg = TrainConfig()
    unet = sd15_unet()
    add_lora(unet, cfg)
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=gen) * 0.01 for k, v in lora_state(unet).items()}
    return peft_to_kohya(state, cfg.lora.alpha)


class Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfyui", required=True, type=Path, help="ComfyUI checkout (the folder holding comfy/)")
    ap.add_argument("--adapter", type=Path, help="adapter .safetensors to check (default: build one here)")
    args = ap.parse_args()

    sys.path.insert(0, str(args.comfyui.resolve()))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # as `main.py --cpu`; must be set before comfy.model_management is imported
    import comfy.lora
    import comfy.model_detection
    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models
    import comfy.utils

    if args.adapter:
        lora = comfy.utils.load_torch_file(str(args.adapter), safe_load=True)  # as the LoraLoader node reads it
        source = str(args.adapter)
    else:
        lora = our_adapter()
        source = "built here: add_lora(SD1.5 UNet, TrainConfig()) + peft_to_kohya(..., 32.0)"
    modules = sorted(k[: -len(SUFFIX)] for k in lora if k.endswith(SUFFIX))

    # ComfyUI's own model: detected from the diffusers UNet's keys and shapes, then built without weights.
    model_config = comfy.model_detection.model_config_from_diffusers_unet(sd15_unet().state_dict())
    if type(model_config) is not comfy.supported_models.SD15:
        print(f"ComfyUI did not detect the UNet as SD15 but as {type(model_config).__name__}")
        return 1
    model = model_config.get_model({}, device=torch.device("meta"))
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"),
                                               offload_device=torch.device("cpu"))
    comfy_sd = model.state_dict()

    key_map = comfy.lora.model_lora_keys_unet(model, {})
    missing = [m for m in modules if m not in key_map]

    warnings = Warnings()
    logging.getLogger().addHandler(warnings)
    patched, _ = comfy.sd.load_lora_for_models(patcher, None, lora, 1.0, 0.0)
    logging.getLogger().removeHandler(warnings)

    targets = {m: key_map[m] for m in modules if m in key_map}
    unpatched = [m for m, t in targets.items() if t not in patched.patches]
    doubled = len(set(targets.values())) != len(targets)
    wrong = []
    for m, t in targets.items():
        if t not in patched.patches:
            continue
        up, down = lora[m + ".lora_up.weight"].float(), lora[m + SUFFIX].float()
        alpha = lora[m + ".alpha"].item() if m + ".alpha" in lora else down.shape[0]
        base = torch.zeros(comfy_sd[t].shape)
        delta = comfy.lora.calculate_weight(patched.patches[t], base, t)
        if delta.shape != base.shape or not torch.allclose(delta, (alpha / down.shape[0]) * up @ down, atol=1e-6):
            wrong.append(m)

    print(f"ComfyUI model config:        {type(model_config).__name__} ({type(model).__name__}, "
          f"{sum(k.startswith('diffusion_model.') for k in comfy_sd)} UNet tensors)")
    print(f"adapter:                     {source}")
    print(f"tensors in adapter:          {len(lora)}")
    print(f"modules in adapter:          {len(modules)}")
    print(f"recognised by key map:       {len(targets)} (key map has {len(key_map)} entries)")
    print(f"distinct weights targeted:   {len(set(targets.values()))}")
    print(f"weights patched by ComfyUI:  {len(patched.patches)}")
    print(f"deltas correct (shape, a/r): {len(targets) - len(wrong) - len(unpatched)}")
    print(f"ComfyUI warnings:            {len(warnings.messages)}")
    for m in modules[:2]:
        print(f"  e.g. {m} -> {key_map.get(m)}")
    for label, items in (("NOT in key map", missing), ("not patched", unpatched), ("wrong delta", wrong),
                         ("ComfyUI warning", warnings.messages)):
        for item in items:
            print(f"  {label}: {item}")
    ok = (modules and not missing and not unpatched and not wrong and not doubled and not warnings.messages
          and len(patched.patches) == len(modules))
    print("OK: ComfyUI recognises and patches every module" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
