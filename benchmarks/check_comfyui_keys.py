"""Check, against a real ComfyUI checkout, that ComfyUI's LoRA loader recognises every module of a DUO adapter.

    python benchmarks/check_comfyui_keys.py --comfyui /path/to/ComfyUI [--family sd15|sdxl|sd3|sd35-medium|sd35-large|flux-dev|flux-schnell|all]
    python benchmarks/check_comfyui_keys.py --comfyui /path/to/ComfyUI --family sdxl --adapter duo_adapter.safetensors
    python benchmarks/check_comfyui_keys.py --comfyui /path/to/ComfyUI --family sd15 --targets down_blocks.1.resnets.0.conv1,attn1.to_q

Without --adapter the adapter is built here, per family: the full-size denoiser (diffusers, meta device), our LoRA
added with `add_lora(denoiser, TrainConfig())` on the family's default targets, and the tensors written by the
family's `export` (kohya names for SD 1.5 and SDXL, diffusers `transformer.*` names for SD3 and Flux). The ComfyUI
side follows the LoraLoader node: ComfyUI detects the model from the diffusers weights (as when it loads a diffusers
UNet, or a diffusers MMDiT or Flux transformer through `convert_diffusers_mmdit`), builds its own model on the meta
device (no weights),
and `comfy.sd.load_lora_for_models` loads the adapter (`comfy.lora.model_lora_keys_unet` + `comfy.lora.load_lora`).
Each patched weight's delta, computed by `comfy.lora.calculate_weight`, must have the shape of the ComfyUI weight
and equal the sum of its modules' scale * up @ down, each in its slice (SD3's q, k, v share one fused qkv weight;
Flux's double blocks fuse them in img_attn.qkv, its single blocks fuse q, k, v and the MLP input in linear1).
Exits 1 if any module of any family is not recognised or not patched, or a delta is wrong.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8)
SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)
_MMDIT = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, attention_head_dim=64,
              joint_attention_dim=4096, pooled_projection_dim=2048)
SD3_MEDIUM = dict(_MMDIT, num_layers=24, num_attention_heads=24, caption_projection_dim=1536, pos_embed_max_size=192)
SD35_MEDIUM = dict(_MMDIT, num_layers=24, num_attention_heads=24, caption_projection_dim=1536,
                   pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
SD35_LARGE = dict(_MMDIT, num_layers=38, num_attention_heads=38, caption_projection_dim=2432,
                  pos_embed_max_size=192, qk_norm="rms_norm")
# FLUX.1 (black-forest-labs/FLUX.1-dev and -schnell transformer/config.json): 19 double + 38 single blocks, 3072 wide;
# [schnell] lacks the guidance embedding, which is how ComfyUI tells FluxSchnell from Flux
_FLUX = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
             num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, axes_dims_rope=(16, 56, 56))
FLUX_DEV = dict(_FLUX, guidance_embeds=True)
FLUX_SCHNELL = dict(_FLUX, guidance_embeds=False)
# name: (our family, diffusers class, config, the ComfyUI model config class it must be detected as)
MODELS = {
    "sd15": ("sd1", "UNet2DConditionModel", SD15_UNET, "SD15"),
    "sdxl": ("sdxl", "UNet2DConditionModel", SDXL_UNET, "SDXL"),
    "sd3": ("sd3", "SD3Transformer2DModel", SD3_MEDIUM, "SD3"),
    "sd35-medium": ("sd3", "SD3Transformer2DModel", SD35_MEDIUM, "SD3"),
    "sd35-large": ("sd3", "SD3Transformer2DModel", SD35_LARGE, "SD3"),
    "flux-dev": ("flux", "FluxTransformer2DModel", FLUX_DEV, "Flux"),
    "flux-schnell": ("flux", "FluxTransformer2DModel", FLUX_SCHNELL, "FluxSchnell"),
}
PAIRS = ((".lora_down.weight", ".lora_up.weight"), (".lora_A.weight", ".lora_B.weight"))


def denoiser(name: str):
    import diffusers
    from accelerate import init_empty_weights

    _, cls, config, _ = MODELS[name]
    with init_empty_weights():
        return getattr(diffusers, cls)(**config)


def our_adapter(name: str, targets: tuple[str, ...] = ()) -> tuple[dict, str]:
    """The tensors train.py would write; LoRA weights are meta after add_lora, so give them real values."""
    from duo_unlearn.trainer.config import TrainConfig
    from duo_unlearn.trainer.families import get_family
    from duo_unlearn.trainer.lora import add_lora, lora_state

    family = get_family(MODELS[name][0])
    cfg = TrainConfig()
    model = denoiser(name)
    targets = tuple(targets) or tuple(family.default_targets)
    add_lora(model, cfg.lora.rank, cfg.lora.alpha, targets)
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=gen) * 0.01 for k, v in lora_state(model).items()}
    source = (f"built here: add_lora({name} {MODELS[name][1]}, targets {list(targets)}, "
              f"rank {cfg.lora.rank}, alpha {cfg.lora.alpha}) + {family.name}.export")
    return family.export(state, cfg.lora.alpha), source


def modules_of(lora: dict) -> dict[str, tuple[str, str]]:
    out = {}
    for key in lora:
        for down, up in PAIRS:
            if key.endswith(down):
                out[key[: -len(down)]] = (down, up)
    return dict(sorted(out.items()))


class Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def comfy_model(name: str):
    """ComfyUI's own model for the diffusers weights, detected the way ComfyUI detects diffusers files."""
    import comfy.model_detection

    sd = denoiser(name).state_dict()
    if MODELS[name][1] == "UNet2DConditionModel":
        model_config = comfy.model_detection.model_config_from_diffusers_unet(sd)
    else:
        model_config = comfy.model_detection.model_config_from_unet(
            comfy.model_detection.convert_diffusers_mmdit(dict(sd), ""), "")
    return model_config


def check(name: str, adapter: Path | None, targets: tuple[str, ...] = ()) -> bool:
    import comfy.lora
    import comfy.model_patcher
    import comfy.sd
    import comfy.utils

    if adapter:
        lora = comfy.utils.load_torch_file(str(adapter), safe_load=True)  # as the LoraLoader node reads it
        source = str(adapter)
    else:
        lora, source = our_adapter(name, targets)
    modules = modules_of(lora)

    model_config = comfy_model(name)
    if model_config is None or type(model_config).__name__ != MODELS[name][3]:
        print(f"[{name}] ComfyUI did not detect the model as {MODELS[name][3]} but as "
              f"{type(model_config).__name__}")
        return False
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

    # a target is a weight key, or (weight key, (dim, offset, size)) for a slice of a fused weight
    targets = {m: key_map[m] for m in modules if m in key_map}
    weight_of = {m: t if isinstance(t, str) else t[0] for m, t in targets.items()}
    unpatched = [m for m, w in weight_of.items() if w not in patched.patches]
    doubled = len(set(map(str, targets.values()))) != len(targets)
    expected: dict[str, torch.Tensor] = {}
    for m, t in targets.items():
        w = weight_of[m]
        if w in unpatched:
            continue
        down_suffix, up_suffix = modules[m]
        up, down = lora[m + up_suffix].float(), lora[m + down_suffix].float()
        # kohya files carry alpha (scale alpha/rank); diffusers-format files have the scale baked in (1)
        scale = lora[m + ".alpha"].item() / down.shape[0] if m + ".alpha" in lora else 1.0
        delta = expected.setdefault(w, torch.zeros(comfy_sd[w].shape))
        part = delta if isinstance(t, str) else delta.narrow(*t[1])
        # a convolution's up is (out, rank, 1, 1) and down (rank, in, k, k): the delta is their product flattened
        part += scale * (up.flatten(1) @ down.flatten(1)).reshape(part.shape)
    wrong = []
    for w, want in expected.items():
        got = comfy.lora.calculate_weight(patched.patches[w], torch.zeros(comfy_sd[w].shape), w)
        if got.shape != want.shape or not torch.allclose(got, want, atol=1e-6):
            wrong += [m for m in targets if weight_of[m] == w]

    fused = sum(not isinstance(t, str) for t in targets.values())
    print(f"[{name}] ComfyUI model config:        {type(model_config).__name__} ({type(model).__name__}, "
          f"{sum(k.startswith('diffusion_model.') for k in comfy_sd)} tensors)")
    print(f"[{name}] adapter:                     {source}")
    print(f"[{name}] tensors in adapter:          {len(lora)}")
    print(f"[{name}] modules in adapter:          {len(modules)}")
    print(f"[{name}] recognised by key map:       {len(targets)} (key map has {len(key_map)} entries)")
    print(f"[{name}] into slices of fused weights: {fused}")
    print(f"[{name}] distinct weights targeted:   {len(set(weight_of.values()))}")
    print(f"[{name}] weights patched by ComfyUI:  {len(patched.patches)}")
    print(f"[{name}] modules dropped:             {len(missing) + len(unpatched)}")
    print(f"[{name}] deltas correct (shape, scale): {len(targets) - len(set(wrong)) - len(unpatched)}")
    print(f"[{name}] ComfyUI warnings:            {len(warnings.messages)}")
    for m in list(modules)[:2]:
        print(f"[{name}]   e.g. {m} -> {key_map.get(m)}")
    for label, items in (("NOT in key map", missing), ("not patched", unpatched), ("wrong delta", wrong),
                         ("ComfyUI warning", warnings.messages)):
        for item in items:
            print(f"[{name}]   {label}: {item}")
    ok = bool(modules and not missing and not unpatched and not wrong and not doubled and not warnings.messages
              and len(patched.patches) == len(set(weight_of.values())))
    print(f"[{name}] " + ("OK: ComfyUI recognises and patches every module" if ok else "FAIL"))
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfyui", required=True, type=Path, help="ComfyUI checkout (the folder holding comfy/)")
    ap.add_argument("--family", default="all", choices=[*MODELS, "all"], help="which full-size model (default all)")
    ap.add_argument("--adapter", type=Path, help="adapter .safetensors to check (default: build one here)")
    ap.add_argument("--targets", default="", help="comma-separated module name suffixes for the adapter built here "
                    "(default: the family's; e.g. the SD 1.x test-bed preset's ResNet convolutions)")
    args = ap.parse_args()
    if args.adapter and args.family == "all":
        ap.error("--adapter needs --family: the model it was trained for")

    sys.path.insert(0, str(args.comfyui.resolve()))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # as `main.py --cpu`; must be set before comfy.model_management is imported
    names = list(MODELS) if args.family == "all" else [args.family]
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    results = {name: check(name, args.adapter, targets) for name in names}
    print("summary: " + ", ".join(f"{n} {'OK' if ok else 'FAIL'}" for n, ok in results.items()))
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
