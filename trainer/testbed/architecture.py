"""The test bed's components: standard diffusers / transformers classes, sized for a 2-core CPU."""
from __future__ import annotations

LATENT_CHANNELS = 4
LATENT_SIZE = 16
TEXT_DIM = 64


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, sample_size=32,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
    )


def build_text_encoder(vocab_size: int, max_length: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=max_length, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))


def build_unet():
    from diffusers import UNet2DConditionModel

    # Cross-attention at both resolutions (16x16 and 8x8): prompt following was weak without it at 16x16.
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=16,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=4,
    )


def scheduler_kwargs() -> dict:
    """Stable Diffusion's own schedule, so SDEdit strengths and DUO's t range mean what they mean on SD."""
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def build_inference_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**scheduler_kwargs(), clip_sample=False, set_alpha_to_one=False, steps_offset=1)
