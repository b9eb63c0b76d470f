"""Stable Diffusion XL: a UNet with added conditions (two CLIP encoders, pooled text, size/crop ids), DDPM noise.

Adapters are written with kohya's SDXL names, the original SGM module paths
(lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q): that is the naming kohya's sd-scripts writes for
SDXL, so every host must load it. A1111 maps `lora_unet_` to `diffusion_model_` for exactly these ("SDXL loras seem
to already have correct compvis keys"), Forge and ComfyUI key their maps on the SGM state dict
(`"lora_unet_" + key.replace(".", "_")`), diffusers converts them back with _maybe_map_sgm_blocks_to_diffusers.
"""
from __future__ import annotations

import re

from .base import Conditioning, Family
from .sd1 import CROSS_ATTENTION_KV, SELF_ATTENTION

# SDXL (base, and the distilled SSD-1B/Vega) has two layers per down block and one more per up block; the SGM
# block index depends on it, and the export gets no UNet config, so it is fixed here (tiny test UNets use 2 too).
LAYERS_PER_BLOCK = 2
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(attentions|resnets)\.(\d+)\.(.+)$")
_MID = re.compile(r"^mid_block\.(attentions|resnets)\.(\d+)\.(.+)$")


def _resnet_part(rest: str, module: str) -> str:
    head, _, tail = rest.partition(".")
    if head not in _RESNET:
        raise ValueError(f"no SGM name for {module}")
    return _RESNET[head] + ("." + tail if tail else "")


def diffusers_to_sgm(module: str) -> str:
    """A diffusers SDXL UNet module path as the SGM (original) UNet names it; attention and resnet modules only."""
    if m := _BLOCK.match(module):
        kind, level, part, layer, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
        per_level = LAYERS_PER_BLOCK + 1  # down: the layers and a downsampler; up: one layer more
        if layer >= (LAYERS_PER_BLOCK if kind == "down_blocks" else per_level):
            raise ValueError(f"{module}: not an SDXL layout ({LAYERS_PER_BLOCK} layers per block)")
        block = f"input_blocks.{1 + level * per_level + layer}" if kind == "down_blocks" \
            else f"output_blocks.{level * per_level + layer}"
        return f"{block}.1.{rest}" if part == "attentions" else f"{block}.0.{_resnet_part(rest, module)}"
    if m := _MID.match(module):
        part, idx, rest = m[1], int(m[2]), m[3]
        if part == "attentions":
            return f"middle_block.1.{rest}"
        return f"middle_block.{0 if idx == 0 else 2}.{_resnet_part(rest, module)}"
    raise ValueError(f"no SGM name for {module} (only attention and resnet modules can be exported for SDXL)")


def peft_to_sgm(peft_state: dict) -> dict:
    """Rename peft keys (`<diffusers path>.lora_A.weight`) to `<SGM path>.lora_A.weight`."""
    out = {}
    for key, value in peft_state.items():
        module, dot, param = key.partition(".lora_")
        out[diffusers_to_sgm(module) + dot + param] = value
    return out


class SDXL(Family):
    name = "sdxl"
    architecture = "stable-diffusion-xl-v1-base/lora"
    base_version = "sdxl_base_v1-0"
    pipeline_class = "StableDiffusionXLPipeline"
    img2img_class = "StableDiffusionXLImg2ImgPipeline"
    default_targets = SELF_ATTENTION
    prompt_side_targets = CROSS_ATTENTION_KV
    token_encoders = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))

    def conditioning(self, pipe, prompts, device, resolution):
        import torch

        hidden, _, pooled, _ = pipe.encode_prompt(list(prompts), device=device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        # As diffusers' SDXL training scripts: original size + crop top-left + target size, here the training
        # resolution with no crop (pair images are resized to it whole). _get_add_time_ids also checks the
        # result against the UNet's added-embedding width.
        proj = (pipe.text_encoder_2.config.projection_dim if pipe.text_encoder_2 is not None
                else int(pooled.shape[-1]))
        size = (resolution, resolution)
        time_ids = pipe._get_add_time_ids(size, (0, 0), size, dtype=torch.float32, text_encoder_projection_dim=proj)
        n = hidden.shape[0]
        return Conditioning({
            "encoder_hidden_states": hidden.float(),
            "added_cond_kwargs": {"text_embeds": pooled.float(), "time_ids": time_ids.to(device).expand(n, -1)},
        })

    def img2img(self, pipe):
        import diffusers

        edit = getattr(diffusers, self.img2img_class)(
            **pipe.components, force_zeros_for_empty_prompt=pipe.config.force_zeros_for_empty_prompt)
        edit.set_progress_bar_config(disable=True)
        return edit

    def unexportable(self, modules):
        bad = []
        for module in modules:
            try:
                diffusers_to_sgm(module)
            except ValueError:
                bad.append(module)
        return bad

    def export(self, peft_state, alpha):
        from ..export import peft_to_kohya

        return peft_to_kohya(peft_to_sgm(peft_state), alpha, prefix="unet")
