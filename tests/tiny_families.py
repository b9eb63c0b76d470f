"""Tiny random SDXL, SD3 and Flux pipelines (no download), saved as diffusers folders like tiny_models.build_tiny_pipeline.

They keep the layouts the family code depends on: SDXL's two layers per down block, a cross-attention mid block and
the text_time added embedding; SD3's three text encoders with CLIP width < T5 width (the CLIP states are padded
to T5's), the pooled projection of both CLIP encoders, and a shifted flow-matching scheduler.
"""
from __future__ import annotations

from pathlib import Path

import torch

CLIP_WIDTH, CLIP_PROJ = 32, 16


def _clip_tokenizer(folder: Path):
    from duo_unlearn.trainer.testbed.shapes import vocabulary_words
    from duo_unlearn.trainer.testbed.vocabulary import build_tokenizer

    return build_tokenizer(folder / "_tok", vocabulary_words())


def _clip(tokenizer, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=CLIP_WIDTH, intermediate_size=64,
                            num_hidden_layers=2, num_attention_heads=2, projection_dim=CLIP_PROJ,
                            max_position_embeddings=tokenizer.model_max_length, bos_token_id=0, eos_token_id=1,
                            pad_token_id=1)
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _vae(latent_channels: int, **extra):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels, sample_size=16,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8, **extra)


def build_tiny_sdxl(folder: Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    folder = Path(folder)
    tokenizer = _clip_tokenizer(folder)
    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(8, 16, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2), attention_head_dim=2, norm_num_groups=8,
        cross_attention_dim=2 * CLIP_WIDTH, use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=time_dim, projection_class_embeddings_input_dim=CLIP_PROJ + 6 * time_dim)
    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       steps_offset=1, timestep_spacing="leading", prediction_type=prediction_type)
    pipe = StableDiffusionXLPipeline(vae=_vae(4, scaling_factor=0.13025), text_encoder=_clip(tokenizer, False),
                                     text_encoder_2=_clip(tokenizer, True), tokenizer=tokenizer,
                                     tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
                                     add_watermarker=False)
    pipe.save_pretrained(str(folder / "model"), safe_serialization=True)
    return folder / "model"


def build_t5_tokenizer(folder: Path):
    """A unigram T5 tokenizer over the test-bed words, built from a vocabulary list: no sentencepiece model file."""
    from transformers import T5Tokenizer

    from duo_unlearn.trainer.testbed.shapes import vocabulary_words

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0) for w in vocabulary_words()]
    T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(str(folder))
    return T5Tokenizer.from_pretrained(str(folder))  # as every user gets it: from files


def build_tiny_sd3(folder: Path, seed: int = 0, dual_attention: bool = False) -> Path:
    """dual_attention: SD3.5 Medium's MMDiT-X layout (a second self-attention, attn2, in the first block)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    folder = Path(folder)
    tokenizer = _clip_tokenizer(folder)
    t5_tokenizer = build_t5_tokenizer(folder / "_t5tok")
    t5_width = 2 * CLIP_WIDTH  # SD3 pads the concatenated CLIP states up to T5's width: it must not be smaller
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer), d_model=t5_width, d_kv=8, d_ff=64, num_layers=1,
                                 num_heads=2, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=t5_width, caption_projection_dim=16,
        pooled_projection_dim=2 * CLIP_PROJ, pos_embed_max_size=16,
        dual_attention_layers=(0,) if dual_attention else (), qk_norm="rms_norm" if dual_attention else None)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(4, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=_clip(tokenizer, True), tokenizer=tokenizer, text_encoder_2=_clip(tokenizer, True),
        tokenizer_2=tokenizer, text_encoder_3=t5, tokenizer_3=t5_tokenizer)
    pipe.save_pretrained(str(folder / "model"), safe_serialization=True)
    return folder / "model"


def build_tiny_flux(folder: Path, seed: int = 0, schnell: bool = False) -> Path:
    """FLUX.1's layout in miniature: double- and single-stream blocks, a 16-channel VAE (latents packed 2x2, so the
    transformer takes 64 channels) with Flux's scaling and shift, CLIP pooled + T5 states, the [dev] guidance
    embedding (none for schnell) and Flux's schedulers (dev: shifted by resolution; schnell: unshifted)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    folder = Path(folder)
    tokenizer = _clip_tokenizer(folder)
    t5_tokenizer = build_t5_tokenizer(folder / "_t5tok")
    t5_width = 2 * CLIP_WIDTH
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer), d_model=t5_width, d_kv=8, d_ff=64, num_layers=1,
                                 num_heads=2, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=t5_width, pooled_projection_dim=CLIP_WIDTH,
        guidance_embeds=not schnell, axes_dims_rope=(2, 2, 4))
    if schnell:  # FLUX.1-schnell's scheduler_config.json
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    else:  # FLUX.1-dev's
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                    max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(
        transformer=transformer, scheduler=scheduler,
        vae=_vae(16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=_clip(tokenizer, False), tokenizer=tokenizer, text_encoder_2=t5, tokenizer_2=t5_tokenizer)
    pipe.save_pretrained(str(folder / "model"), safe_serialization=True)
    return folder / "model"
