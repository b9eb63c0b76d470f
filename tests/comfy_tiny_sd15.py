"""A tiny checkpoint ComfyUI detects as SD 1.5, plus the diffusers configs the trainer needs to read it.

Runs in the ComfyUI test venv with a ComfyUI tree on sys.path: `python comfy_tiny_sd15.py COMFY_DIR OUT_DIR`.
ComfyUI recognises SD 1.5 by shapes (model_channels 320, context_dim 768, no linear transformer projections), so
one level with one block keeps it CPU-sized. Its CLIP is ComfyUI's fixed SD1 text encoder size (ViT-L/14 text), and
its VAE the SD-x4-upscaler layout (3 levels) that ComfyUI also accepts. Weights are random and seeded.
Writes OUT_DIR/tiny_sd15.safetensors and OUT_DIR/tiny_sd15_diffusers/ (configs and tokenizer, no weights).
"""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=[320],
            down_block_types=["CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D"],
            cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512], layers_per_block=2,
           down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3, sample_size=32,
           norm_num_groups=32, scaling_factor=0.18215)
CLIP = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=49406,
            eos_token_id=49407, pad_token_id=49407)
SCHEDULER = {"_class_name": "PNDMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
             "beta_end": 0.012, "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
             "steps_offset": 1, "prediction_type": "epsilon"}


def _unet_ldm_state(unet) -> dict:
    """diffusers UNet weights under ComfyUI's (LDM) names, through ComfyUI's own name map."""
    import comfy.utils

    config = {"num_res_blocks": [1], "channel_mult": [1], "transformer_depth": [1], "transformer_depth_output": [1, 1],
              "transformer_depth_middle": 1, "attention_resolutions": [1]}
    mapping = comfy.utils.unet_to_diffusers(config)  # diffusers key -> ldm key
    state = unet.state_dict()
    out = {}
    for dkey, lkey in mapping.items():
        if dkey in state:
            out["model.diffusion_model." + lkey] = state.pop(dkey)
    if state:
        raise RuntimeError(f"unmapped UNet keys: {sorted(state)[:5]}")
    return out


def _three_level_decoder(key: str) -> str:
    """ComfyUI's converter numbers decoder levels for four (diffusers up_blocks.i -> up.{3-i}); ours has three."""
    m = re.match(r"decoder\.up\.(\d+)\.(.*)", key)
    return f"decoder.up.{int(m.group(1)) - 1}.{m.group(2)}" if m else key


def build(comfy_dir: Path, out: Path) -> None:
    import torch
    from comfy.diffusers_convert import convert_vae_state_dict
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET)
    vae = AutoencoderKL(**VAE)
    clip = CLIPTextModel(CLIPTextConfig(**CLIP))
    state = _unet_ldm_state(unet)
    state.update({"first_stage_model." + _three_level_decoder(k): v
                  for k, v in convert_vae_state_dict(vae.state_dict()).items()})
    # the original SD layout; newer transformers drop the text_model. level from CLIPTextModel's own names
    state.update({"cond_stage_model.transformer.text_model." + k.removeprefix("text_model."): v
                  for k, v in clip.state_dict().items() if not k.endswith("position_ids")})
    save_file({k: v.to(torch.float16).contiguous() for k, v in state.items()}, str(out / "tiny_sd15.safetensors"))

    cfg = out / "tiny_sd15_diffusers"
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        (cfg / sub).mkdir(parents=True, exist_ok=True)
    unet.save_config(cfg / "unet")
    vae.save_config(cfg / "vae")
    clip.config.save_pretrained(cfg / "text_encoder")
    for f in (comfy_dir / "comfy" / "sd1_tokenizer").iterdir():
        shutil.copy(f, cfg / "tokenizer" / f.name)
    tok_cfg = cfg / "tokenizer" / "tokenizer_config.json"
    tok_cfg.write_text(json.dumps({**json.loads(tok_cfg.read_text()), "model_max_length": 77}))  # as SD 1.5 ships it
    (cfg / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER))
    (cfg / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.30.0",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "PNDMScheduler"], "safety_checker": [None, None],
        "feature_extractor": [None, None], "requires_safety_checker": False}))


if __name__ == "__main__":
    sys.path.insert(0, sys.argv[1])
    build(Path(sys.argv[1]), Path(sys.argv[2]))
