"""Stable Diffusion 1.x and 2.x: one UNet, one CLIP text encoder, DDPM noise (epsilon or v)."""
from __future__ import annotations

from .base import Conditioning, Family

# The official recipe's targets. On the test bed neither half of the UNet's self-attention removes red alone, and
# per-position layers (feed-forward) take orange with it (RESULTS.md, twenty-first session).
SELF_ATTENTION = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0")
CROSS_ATTENTION_KV = ("attn2.to_k", "attn2.to_v")  # read the text encoder's output, nothing of the image


class SD1(Family):
    name = "sd1"
    architecture = "stable-diffusion-v1/lora"
    base_version = "sd_v1"
    pipeline_class = "StableDiffusionPipeline"
    img2img_class = "StableDiffusionImg2ImgPipeline"
    default_targets = SELF_ATTENTION
    prompt_side_targets = CROSS_ATTENTION_KV

    def conditioning(self, pipe, prompts, device, resolution):
        hidden = pipe.encode_prompt(list(prompts), device, 1, False)[0]
        return Conditioning({"encoder_hidden_states": hidden.float()})


class SD2(SD1):
    name = "sd2"
    architecture = "stable-diffusion-v2-768-v/lora"
    base_version = "sd_v2"

    def metadata(self, pipe=None):
        meta = super().metadata(pipe)
        if meta.get("modelspec.prediction_type") == "epsilon":  # SD 2.x base at 512 px, as kohya names it
            meta["modelspec.architecture"] = "stable-diffusion-v2-512/lora"
        return meta
