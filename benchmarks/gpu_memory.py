"""Seconds per DUO step and peak GPU memory: the project's trainer against an official-style step, same process.

    python benchmarks/gpu_memory.py                  # SD 1.5 architecture at 512 px on the GPU, every variant
    python benchmarks/gpu_memory.py --tiny           # tiny configs on the CPU, in seconds (the test suite runs this)
    python benchmarks/gpu_memory.py --families sd1 --steps 6 --warmup 2 --out table.md
    python benchmarks/gpu_memory.py --families flux  # FLUX.1 [dev], 12B, NF4 transformer, 1024 px (needs bitsandbytes)
    python benchmarks/gpu_memory.py --families sdxl,sd3 --card-gb 12 --only "defaults,bf16"  # a 12 GB card's run

The components have the real architecture of each family (configs below, written out here: nothing is downloaded)
and random weights: speed and memory do not depend on what the weights are. The pair dataset is written at the
model's native resolution (red squares and their blue twins). For each family it runs
  (a) trainer.train.train with TrainConfig's defaults, then with each precision x gradient checkpointing choice
      (and 8-bit AdamW when bitsandbytes imports), and
  (b) an official-style step as naver-ai/DUO train/unlearn-sd.py takes it: VAE (fp32) and text encoder on the device
      and run every step, UNet and text encoder cast to the precision's dtype, LoRA upcast to fp32 under fp16 only,
      reference = adapter disabled, the same 4-pair batch (12 UNet rows) and the same loss, under accelerate,
and prints a markdown table: median seconds per step after warm-up (synchronised), peak allocated and reserved
memory, and project/official ratios at the same precision, plus the device name and the date.
Flux (no official DUO script to compare with) runs the project's variants only: its transformer is built in bf16 on
the device, quantised in place to NF4 (families.flux.quantize_in_place, the trainer's CPU/single-file path) and the
peak is counted from then on: what the issue's "<= 16 GB at 1024 px" target is measured against.
--card-gb N adds "project defaults, N GB card": the components built in bf16 (as a host loads them in half precision),
then the process capped at N GiB with torch.cuda.set_per_process_memory_fraction, so `auto` decides as it would on
that card and the allocator refuses anything beyond it; what the trainer chose is in the note column.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import statistics
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

GB = 2**30
SD1_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                     clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")

# Architecture configs per family: diffusers / transformers constructor arguments, as in the families' published
# config.json files (SD 1.5: unet/, vae/, text_encoder/ of stable-diffusion-v1-5). New families add an entry.
FAMILIES = {
    "sd1": {
        "resolution": 512,
        "unet": dict(sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True,
                     freq_shift=0, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                     up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                     block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1,
                     mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
                     cross_attention_dim=768, attention_head_dim=8),
        "vae": dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=512, act_fn="silu",
                    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                    block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32),
        "text_encoder": dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                             num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                             layer_norm_eps=1e-5, projection_dim=768, bos_token_id=0, eos_token_id=2,
                             pad_token_id=1),
        "tokenizer_length": 77,
        "scheduler": SD1_SCHEDULER,
    },
}
# FLUX.1 [dev] (black-forest-labs/FLUX.1-dev: transformer/, vae/, text_encoder/ = CLIP-L, text_encoder_2/ = T5-XXL
# encoder, scheduler/ configs). Built by build_flux_pipeline; trained through the Flux family.
FLUX_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                      base_image_seq_len=256, max_image_seq_len=4096)
FAMILIES["flux"] = {
    "family": "flux",
    "build": "flux",
    "official": False,
    "resolution": 1024,
    "train_resolution": 1024,
    "quantize": "nf4",
    "transformer": dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                        guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
    "vae": dict(in_channels=3, out_channels=3, latent_channels=16, sample_size=1024, act_fn="silu",
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
                scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False),
    "text_encoder": dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                         layer_norm_eps=1e-5, projection_dim=768, bos_token_id=0, eos_token_id=2, pad_token_id=1),
    "text_encoder_2": dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                           relative_attention_num_buckets=32, feed_forward_proj="gated-gelu",
                           layer_norm_epsilon=1e-6, decoder_start_token_id=0,
                           pad_token_id=0, eos_token_id=1),
    "tokenizer_length": 77,
    "scheduler": FLUX_SCHEDULER,
}
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
              bos_token_id=0, eos_token_id=2, pad_token_id=1)
CLIP_G = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=1280,
              bos_token_id=0, eos_token_id=2, pad_token_id=1)
# SDXL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0 unet/, vae/, text_encoder/, text_encoder_2/ configs)
FAMILIES["sdxl"] = {
    "family": "sdxl", "build": "sdxl", "official": False, "resolution": 1024, "train_resolution": 1024,
    "unet": dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                                                                        "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                 use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816, norm_num_groups=32),
    "vae": dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=1024, act_fn="silu",
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
                scaling_factor=0.13025, force_upcast=True),
    "text_encoder": CLIP_L, "text_encoder_2": CLIP_G, "tokenizer_length": 77,
}
# SD3 Medium without T5 (stabilityai/stable-diffusion-3-medium-diffusers transformer/, vae/ configs; the target
# card is 12 GB, so text_encoder_3 = None as diffusers allows)
FAMILIES["sd3"] = {
    "family": "sd3", "build": "sd3", "official": False, "resolution": 1024, "train_resolution": 512,
    "transformer": dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                        num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                        pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192),
    "vae": dict(in_channels=3, out_channels=3, latent_channels=16, sample_size=1024, act_fn="silu",
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
                scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False),
    "text_encoder": CLIP_L, "text_encoder_2": CLIP_G, "tokenizer_length": 77,
}
# --tiny: the same code path on the CPU in seconds (shapes as tests/tiny_models.py)
TINY_FAMILIES = {
    "sd1": {
        "resolution": 32,
        "unet": dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
                     norm_num_groups=8, cross_attention_dim=32, attention_head_dim=2,
                     down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                     up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
        "vae": dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=32,
                    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                    block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=8),
        "text_encoder": dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                             pad_token_id=1),
        "tokenizer_length": 16,
        "scheduler": SD1_SCHEDULER,
    },
}
TINY_FAMILIES["flux"] = {  # shapes as tests/tiny_families.build_tiny_flux; not quantised (bitsandbytes optional)
    "family": "flux",
    "build": "flux",
    "official": False,
    "resolution": 32,
    "train_resolution": 32,
    "quantize": None,
    "transformer": dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
                        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
                        axes_dims_rope=(4, 6, 6)),  # 32 wide: room for rank 32
    "vae": dict(in_channels=3, out_channels=3, latent_channels=16, sample_size=32,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8, scaling_factor=0.3611,
                shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False),
    "text_encoder": dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
    "text_encoder_2": dict(vocab_size=1000, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
                           decoder_start_token_id=0, pad_token_id=0, eos_token_id=1),
    "tokenizer_length": 16,
    "scheduler": FLUX_SCHEDULER,
}
TINY_CLIP = dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                 max_position_embeddings=16, projection_dim=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=32,
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=8)
TINY_FAMILIES["sdxl"] = {
    "family": "sdxl", "build": "sdxl", "official": False, "resolution": 32, "train_resolution": 32,
    "unet": dict(sample_size=4, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 32),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=2, norm_num_groups=8,
                 cross_attention_dim=64, use_linear_projection=True, addition_embed_type="text_time",
                 addition_time_embed_dim=8, projection_class_embeddings_input_dim=16 + 6 * 8),
    "vae": TINY_VAE, "text_encoder": TINY_CLIP, "text_encoder_2": TINY_CLIP, "tokenizer_length": 16,
}
TINY_FAMILIES["sd3"] = {
    "family": "sd3", "build": "sd3", "official": False, "resolution": 32, "train_resolution": 32,
    "transformer": dict(sample_size=4, patch_size=2, in_channels=4, out_channels=4, num_layers=1,
                        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64,
                        caption_projection_dim=32, pooled_projection_dim=32, pos_embed_max_size=16),
    "vae": TINY_VAE, "text_encoder": TINY_CLIP, "text_encoder_2": TINY_CLIP, "tokenizer_length": 16,
}
PRECISION_DTYPES = {"no": "float32", "fp16": "float16", "bf16": "bfloat16"}
RANK, ALPHA, TARGETS = 32, 32.0, ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0")
BETA, PAIRS_PER_STEP = 500.0, 4


@dataclass
class Variant:
    """One run. `settings` are TrainConfig fields, so a new TrainConfig option is one more key here."""
    label: str
    runner: str  # "project" or "official"
    settings: dict = field(default_factory=dict)
    card_gb: float | None = None  # cap the process at this much GPU memory (project runs on CUDA only)


@dataclass
class Measure:
    variant: Variant
    seconds: float | None = None
    peak_allocated: int | None = None
    peak_reserved: int | None = None
    note: str = ""


def project_variants(device_type: str, have_bnb: bool, card_gb: float | None = None) -> list[Variant]:
    from duo_unlearn.trainer.config import TrainConfig

    defaults = TrainConfig()
    default_settings = {"mixed_precision": defaults.mixed_precision,
                        "gradient_checkpointing": defaults.gradient_checkpointing,
                        "use_8bit_adam": defaults.use_8bit_adam}
    out = [Variant("project defaults", "project", dict(default_settings))]
    if card_gb and device_type == "cuda":
        out.append(Variant(f"project defaults, {card_gb:g} GB card", "project", dict(default_settings), card_gb))
    for precision in precisions(device_type):
        for ckpt in (False, True):
            out.append(Variant(f"project {precision} ckpt {'on' if ckpt else 'off'}", "project",
                               {"mixed_precision": precision, "gradient_checkpointing": ckpt}))
    if have_bnb and device_type == "cuda":
        best = "bf16" if "bf16" in precisions(device_type) else precisions(device_type)[-1]
        out.append(Variant(f"project {best} ckpt on 8-bit Adam", "project",
                           {"mixed_precision": best, "gradient_checkpointing": True, "use_8bit_adam": True}))
    return out


def official_variants(device_type: str) -> list[Variant]:
    return [Variant(f"official {p}", "official", {"mixed_precision": p}) for p in precisions(device_type)]


def precisions(device_type: str) -> list[str]:
    import torch

    if device_type == "cuda":
        return ["no", "fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
    return ["no", "bf16"]  # fp16 autocast is refused on the CPU, by accelerate and by the project


# -- building --

@contextmanager
def default_dtype(dtype):
    """torch's default dtype for the block (None: unchanged): random weights built straight in half precision."""
    import torch

    before = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def build_pipeline(family: dict, device, folder: Path, seed: int = 0):
    """A StableDiffusionPipeline with the family's architecture and random weights, built on the device."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from duo_unlearn.trainer.testbed.shapes import vocabulary_words
    from duo_unlearn.trainer.testbed.vocabulary import BOS, EOS, write_tokenizer_files

    torch.manual_seed(seed)
    tok_dir = folder / "tokenizer"
    if not tok_dir.exists():
        write_tokenizer_files(tok_dir, vocabulary_words())
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir), model_max_length=family["tokenizer_length"],
                                              bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=EOS)
    with torch.device(device):  # random init where the weights will live: seconds instead of a minute on a CPU
        unet = UNet2DConditionModel(**family["unet"])
        vae = AutoencoderKL(**family["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**family["text_encoder"]))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(**family["scheduler"]), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_flux_pipeline(family: dict, device, folder: Path, seed: int = 0):
    """A FluxPipeline with the family's architecture and random weights: the transformer built in bf16 on the device
    (fp32 for the CPU's tiny run), then quantised in place when the family says so."""
    import torch
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline,
                           FluxTransformer2DModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5Tokenizer

    from duo_unlearn.trainer.families.flux import quantize_in_place
    from duo_unlearn.trainer.testbed.shapes import vocabulary_words
    from duo_unlearn.trainer.testbed.vocabulary import BOS, EOS, write_tokenizer_files

    torch.manual_seed(seed)
    tok_dir, t5_dir = folder / "tokenizer", folder / "tokenizer_2"
    if not tok_dir.exists():
        write_tokenizer_files(tok_dir, vocabulary_words())
    if not t5_dir.exists():  # a unigram T5 tokenizer over the test-bed words: no sentencepiece file to download
        vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0) for w in vocabulary_words()]
        T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(str(t5_dir))
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir), model_max_length=family["tokenizer_length"],
                                              bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=EOS)
    with default_dtype(torch.bfloat16 if device.type == "cuda" else torch.float32), torch.device(device):
        transformer = FluxTransformer2DModel(**family["transformer"])
        vae = AutoencoderKL(**family["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**family["text_encoder"]))
        text_encoder_2 = T5EncoderModel(T5Config(**family["text_encoder_2"]))
    if family.get("quantize"):
        quantize_in_place(transformer, family["quantize"])
    pipe = FluxPipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(**family["scheduler"]),
                        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                        tokenizer_2=T5Tokenizer.from_pretrained(str(t5_dir)))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _clip_tokenizer(family: dict, folder: Path):
    from transformers import CLIPTokenizer

    from duo_unlearn.trainer.testbed.shapes import vocabulary_words
    from duo_unlearn.trainer.testbed.vocabulary import BOS, EOS, write_tokenizer_files

    tok_dir = folder / "tokenizer"
    if not tok_dir.exists():
        write_tokenizer_files(tok_dir, vocabulary_words())
    return CLIPTokenizer.from_pretrained(str(tok_dir), model_max_length=family["tokenizer_length"], bos_token=BOS,
                                         eos_token=EOS, pad_token=EOS, unk_token=EOS)


def build_sdxl_pipeline(family: dict, device, folder: Path, seed: int = 0):
    """StableDiffusionXLPipeline with SDXL base's architecture and random weights, built on the device."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer = _clip_tokenizer(family, folder)
    with torch.device(device):
        unet = UNet2DConditionModel(**family["unet"])
        vae = AutoencoderKL(**family["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**family["text_encoder"]))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**family["text_encoder_2"]))
    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
                                     add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_sd3_pipeline(family: dict, device, folder: Path, seed: int = 0):
    """StableDiffusion3Pipeline with SD3 Medium's architecture, no T5, random weights, built on the device."""
    import torch
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3Pipeline)
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer = _clip_tokenizer(family, folder)
    with torch.device(device):
        transformer = SD3Transformer2DModel(**family["transformer"])
        vae = AutoencoderKL(**family["vae"])
        text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(**family["text_encoder"]))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**family["text_encoder_2"]))
    pipe = StableDiffusion3Pipeline(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                    text_encoder_2=text_encoder_2, tokenizer_2=tokenizer, text_encoder_3=None,
                                    tokenizer_3=None, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


BUILDERS = {"sd1": build_pipeline, "flux": build_flux_pipeline, "sdxl": build_sdxl_pipeline,
            "sd3": build_sd3_pipeline}


def write_pairs(folder: Path, n: int, size: int, seed: int = 0) -> Path:
    """Red squares (unsafe) and blue twins at the same place (safe), in the project's pair dataset format."""
    import numpy as np
    from PIL import Image

    from duo_unlearn.trainer.pair_dataset import INDEX, PairRecord

    rng = np.random.default_rng(seed)
    (folder / "unsafe").mkdir(parents=True, exist_ok=True)
    (folder / "safe").mkdir(exist_ok=True)
    lines = []
    for i in range(n):
        x, y = (int(v) for v in rng.integers(0, size // 2, size=2))
        for sub, colour in (("unsafe", (220, 30, 30)), ("safe", (40, 80, 220))):
            a = np.full((size, size, 3), 255, np.uint8)
            a[y:y + size // 2, x:x + size // 2] = colour
            Image.fromarray(a).save(folder / sub / f"{i:04d}.png")
        lines.append(PairRecord(f"{i:04d}", f"unsafe/{i:04d}.png", f"safe/{i:04d}.png", "a red square",
                                "a blue square", seed=i).to_json())
    (folder / INDEX).write_text("\n".join(lines) + "\n")
    return folder


# -- measuring --

def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset(device):
    """A fresh accelerate state and allocator statistics for the next run. accelerate keeps one process-wide
    state and refuses a second Accelerator with another mixed_precision, hence its (private) reset."""
    import torch
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peaks(device) -> tuple[int | None, int | None]:
    import torch

    if device.type != "cuda":
        return None, None
    return torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)


def run_project(variant: Variant, family: dict, device, tmp: Path, pairs: Path, steps: int, warmup: int) -> Measure:
    from duo_unlearn.trainer.config import TrainConfig
    from duo_unlearn.trainer.families import get_family
    from duo_unlearn.trainer.models import LoadedModel
    from duo_unlearn.trainer.train import train

    import torch

    from duo_unlearn.trainer.runtime import cuda_index, pipeline_modules

    with default_dtype(torch.bfloat16 if variant.card_gb else None):
        pipe = BUILDERS[family.get("build", "sd1")](family, device, tmp)
    source = tmp / "random-weights.safetensors"  # stands in for the checkpoint file the adapter's hash names
    source.write_bytes(b"random weights")
    name = family.get("family", "sd1")
    model = LoadedModel(pipe=pipe, family=name, name=f"random-{name}", source=source)
    if variant.card_gb:  # where a loader leaves them: all but a transformer quantised at load time on the CPU
        denoiser = get_family(name).denoiser(pipe) if "family" in family else pipe.unet
        for module in pipeline_modules(pipe).values():
            if module is not denoiser:
                module.to("cpu")
    _reset(device)
    if variant.card_gb and device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, variant.card_gb * GB / total), cuda_index(device))
    stamps: list[float] = []
    said: list[str] = []

    def clock(event):
        if event.stage == "train":
            _sync(device)
            stamps.append(time.perf_counter())
        elif event.stage == "cache":
            stamps.clear()
        if "checkpointing on" in event.message or "out of memory" in event.message:
            said.append(event.message)

    cfg = TrainConfig(pairs=str(pairs), model="random", out=str(tmp / f"{variant.runner}.safetensors"),
                      steps=warmup + steps, batch_pairs=PAIRS_PER_STEP, beta=BETA, device=device.type,
                      resolution=family.get("train_resolution"), overwrite=True,  # each variant replaces the last
                      micro_batch_pairs=family.get("micro_batch_pairs"),
                      **variant.settings)
    targets = get_family(name).default_targets if "family" in family else TARGETS
    cfg.lora.rank, cfg.lora.alpha, cfg.lora.target_modules = RANK, ALPHA, tuple(targets)
    try:
        train(cfg, progress=clock, model=model)
        allocated, reserved = _peaks(device)
    finally:
        if variant.card_gb and device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(1.0, cuda_index(device))
    del model, pipe
    intervals = [b - a for a, b in zip(stamps, stamps[1:])][max(warmup - 1, 0):]
    note = "; ".join(dict.fromkeys(said)) if variant.card_gb else ""
    return Measure(variant, statistics.median(intervals), allocated, reserved, note)


def run_official(variant: Variant, family: dict, device, tmp: Path, pairs: Path, steps: int, warmup: int) -> Measure:
    """One official-style DUO step per iteration, after naver-ai/DUO train/unlearn-sd.py (written here)."""
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from peft import LoraConfig

    from duo_unlearn.trainer.pair_dataset import load_image_tensor, read_pairs

    precision = variant.settings["mixed_precision"]
    weight_dtype = getattr(torch, PRECISION_DTYPES[precision])
    pipe = build_pipeline(family, device, tmp)
    _reset(device)
    accelerator = Accelerator(mixed_precision=precision, cpu=device.type == "cpu")
    text_encoder = pipe.text_encoder.to(device, dtype=weight_dtype)
    unet = pipe.unet.to(device, dtype=weight_dtype)
    vae = pipe.vae.to(device, dtype=torch.float32)  # "to avoid precision error"
    for m in (text_encoder, unet, vae):
        m.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian", target_modules=list(TARGETS)))
    if precision == "fp16":  # the official script upcasts the LoRA under fp16 only
        for p in unet.parameters():
            if p.requires_grad:
                p.data = p.to(torch.float32)
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-4 * 100 / BETA, weight_decay=1e-2)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    raw = accelerator.unwrap_model(unet)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    records = read_pairs(pairs)
    size = family["resolution"]
    unsafe = torch.stack([load_image_tensor(pairs / r.unsafe, size) for r in records])
    safe = torch.stack([load_image_tensor(pairs / r.safe, size) for r in records])
    lam = 1e6 * BETA / 100
    gen = torch.Generator().manual_seed(0)
    times = []
    B = PAIRS_PER_STEP
    for step in range(warmup + steps):
        _sync(device)
        start = time.perf_counter()
        idx = torch.randint(0, len(records), (B,), generator=gen)
        prompts = [""] * B  # the official nudity run trains without prompts
        embeds, _ = pipe.encode_prompt(prompts + prompts + prompts, device=device, num_images_per_prompt=1,
                                       do_classifier_free_guidance=False)
        pixels = torch.cat([unsafe[idx], safe[idx]]).to(device, dtype=vae.dtype)
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
        latents = latents.to(weight_dtype)
        noise = torch.randn_like(latents[:B]).repeat(2, 1, 1, 1)
        t = torch.randint(0, 750, (2 * B,), device=device).long()
        noisy = scheduler.add_noise(latents, noise, t)
        timesteps = torch.cat([t, torch.full((B,), 999, device=device)])
        x = torch.cat([noisy, noise[:B]])
        pred = unet(x, timesteps, embeds).sample
        with torch.no_grad():
            raw.disable_adapters()
            ref = unet(x, timesteps, embeds).sample
            raw.enable_adapters()
        p_lose, p_win, p_prior = pred.chunk(3)
        r_lose, r_win, r_prior = ref.chunk(3)
        target = noise[:B].float()

        def mse(a):
            return F.mse_loss(a.float(), target, reduction="none").mean(dim=[1, 2, 3])

        diff = (mse(p_win) - mse(r_win)) - (mse(p_lose) - mse(r_lose))
        loss = -F.logsigmoid(-BETA * diff).mean() + lam * F.mse_loss(p_prior.float(), r_prior.float())
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        _sync(device)
        times.append(time.perf_counter() - start)
    allocated, reserved = _peaks(device)
    del unet, raw, optimizer, pipe, text_encoder, vae
    return Measure(variant, statistics.median(times[warmup:]), allocated, reserved)


def estimate_gb(family: dict, settings: dict) -> float | None:
    """trainer.runtime's estimate for a project variant, printed next to the measurement to calibrate it."""
    try:
        from duo_unlearn.trainer.runtime import estimate_training_bytes
    except ImportError:
        return None
    import torch
    from diffusers import UNet2DConditionModel

    from peft import LoraConfig

    with torch.device("meta"):  # counts without allocating
        unet = UNet2DConditionModel(**family["unet"])
        params = sum(p.numel() for p in unet.parameters())
        unet.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(TARGETS)))
        lora = sum(p.numel() for n, p in unet.named_parameters() if ".lora_" in n)
    params -= lora
    half = settings.get("mixed_precision", "no") != "no"
    latent = family["resolution"] // 8
    from duo_unlearn.trainer.config import TrainConfig
    from duo_unlearn.trainer.train import estimated_rows

    rows = estimated_rows(TrainConfig(batch_pairs=PAIRS_PER_STEP), 2 if half else 4, 1e6 * BETA / 100)
    return estimate_training_bytes(params, lora, rows, (latent, latent), frozen_bytes=2 if half else 4,
                                   activation_bytes=2 if half else 4,
                                   checkpointing=bool(settings.get("gradient_checkpointing")),
                                   optimizer_state_bytes=2 if settings.get("use_8bit_adam") else 8) / GB


def table(results: list[Measure], family: str, family_cfg: dict, device_name: str, steps: int,
          estimate: bool = True) -> str:
    def gb(v):
        return f"{v / GB:.2f}" if v is not None else "n/a"

    official = {m.variant.settings["mixed_precision"]: m for m in results if m.variant.runner == "official"}
    size = family_cfg.get("train_resolution") or family_cfg["resolution"]
    rows = [f"### {family} at {size} px, {PAIRS_PER_STEP} pairs/step, rank {RANK} — "
            f"{device_name}, {datetime.date.today().isoformat()}",
            "",
            f"median of {steps} steps after warm-up; ratios against the official-style step at the same precision",
            "",
            "| run | s/step | peak allocated GB | peak reserved GB | estimate GB | time ratio | memory ratio | note |",
            "|---|---|---|---|---|---|---|---|"]
    def precision(settings):
        asked = settings.get("mixed_precision")
        if asked != "auto":
            return asked
        from duo_unlearn.trainer.runtime import RuntimeConfig, resolve

        return resolve(RuntimeConfig(settings.get("device", "auto"), "auto")).mixed_precision

    for m in results:
        ref = official.get(precision(m.variant.settings)) if m.variant.runner == "project" else None
        t_ratio = f"{m.seconds / ref.seconds:.2f}" if ref and m.seconds and ref.seconds else ""
        m_ratio = (f"{m.peak_allocated / ref.peak_allocated:.2f}"
                   if ref and m.peak_allocated and ref.peak_allocated else "")
        est = (estimate_gb(family_cfg, m.variant.settings)
               if estimate and m.variant.runner == "project" and "unet" in family_cfg else None)  # SD 1.x-calibrated
        sec = f"{m.seconds:.3f}" if m.seconds is not None else "failed"
        rows.append(f"| {m.variant.label} | {sec} | {gb(m.peak_allocated)} | {gb(m.peak_reserved)} | "
                    f"{f'{est:.2f}' if est is not None else ''} | {t_ratio} | {m_ratio} | {m.note} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny configs on the CPU, in seconds")
    p.add_argument("--families", default="sd1", help=f"comma-separated, of: {', '.join(FAMILIES)}")
    p.add_argument("--steps", type=int, default=None, help="measured steps per run (default 5; 3 with --tiny)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--only", default="",
                   help="run only variants whose label contains one of these comma-separated texts")
    p.add_argument("--card-gb", type=float, default=None,
                   help="also run the defaults capped at this much GPU memory, as on a card of that size (CUDA only)")
    p.add_argument("--resolution", type=int, default=None, help="train at this resolution instead of the family's")
    p.add_argument("--micro-batch-pairs", type=int, default=None,
                   help="pairs per forward pass in the project's runs (default: all 4 at once)")
    p.add_argument("--out", default=None, help="also append the table to this markdown file")
    args = p.parse_args(argv)
    configs = TINY_FAMILIES if args.tiny else FAMILIES
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in configs]
    if unknown:
        p.error(f"unknown family {', '.join(unknown)}; known: {', '.join(configs)}")
    device = torch.device("cpu") if args.tiny or not torch.cuda.is_available() else torch.device("cuda")
    if device.type == "cpu" and not args.tiny:
        print("note: no CUDA GPU: running the full-size configs on the CPU (slow); --tiny is the CPU check")
    steps = args.steps or (3 if args.tiny else 5)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    try:
        import bitsandbytes  # noqa: F401

        have_bnb = True
    except ImportError:
        have_bnb = False
    tables = []
    for name in families:
        family = dict(configs[name])
        if args.resolution:
            family["train_resolution"] = args.resolution
        if args.micro_batch_pairs:
            family["micro_batch_pairs"] = args.micro_batch_pairs
        official = official_variants(device.type) if family.get("official", True) else []
        variants = official + project_variants(device.type, have_bnb, args.card_gb)
        wanted = [w.strip() for w in args.only.split(",")] if args.only else [""]
        variants = [v for v in variants if any(w in v.label for w in wanted)]
        results = []
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            pairs = write_pairs(tmp / "pairs", 8, family["resolution"])
            for v in variants:
                started = time.perf_counter()
                run = run_official if v.runner == "official" else run_project
                try:
                    m = run(v, family, device, tmp, pairs, steps, args.warmup)
                except Exception as e:  # one variant failing (OOM, a missing kernel) must not hide the others
                    traceback.print_exc()  # where it failed, in the log: the table keeps one line
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    m = Measure(v, note=f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}")
                results.append(m)
                # the peaks too, so a run cut short by its time limit keeps what it measured
                peaks = " ".join(f"{k} {b / GB:.2f} GB" for k, b in
                                 (("allocated", m.peak_allocated), ("reserved", m.peak_reserved)) if b is not None)
                print(f"[{name}] {v.label}: {m.seconds if m.seconds is not None else 'failed'} s/step {peaks} "
                      f"({time.perf_counter() - started:.1f} s) {m.note}", file=sys.stderr, flush=True)
        # the estimate's activation constant is SD 1.5's: meaningless for the tiny shapes
        tables.append(table(results, name, family, device_name, steps, estimate=not args.tiny and "unet" in family))
    text = "\n\n".join(tables)
    print(text)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(text + "\n\n")
    return 0 if all("failed" not in t for t in tables) else 1


if __name__ == "__main__":
    raise SystemExit(main())
