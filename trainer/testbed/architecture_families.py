"""The SDXL and SD3 test beds' components, built to reuse the SD 1.x test bed's trained parts.

Both reuse the SD 1.x test bed's VAE (32x32 RGB -> 16x16x4) and tokenizer. Their CLIP encoders start from its
text encoder: SDXL and SD3 read the *penultimate* hidden state (hidden_states[-2]), so each encoder gets a third
layer (a copy of the second) and the SD 1.x test bed's two layers produce the states the denoiser reads.

- SDXL: `UNet2DConditionModel` with SDXL's layout (two layers per down block, three per up block, cross-attention
  mid block, `text_time` added embedding of the pooled text + size/crop ids), widths (32, 64) as the SD 1.x UNet,
  warm-started from it (`warm_start_sdxl_unet`): the extra layers start as identities, the second encoder's
  half of the cross-attention keys/values and the added embedding start at zero, so at step 0 the SDXL UNet
  computes what the SD 1.x UNet computes on the first encoder's states.
- SD3: `SD3Transformer2DModel` (MMDiT, patch 2, 4 latent channels), trained from scratch, two CLIP encoders with
  projection and SD3's shifted flow-matching scheduler. No real T5: it trains on zeros in T5's place, which is
  what `StableDiffusion3Pipeline` feeds with `text_encoder_3=None` (SD3 Medium without T5). The folder carries a
  stand-in T5 (`zero_t5`: every weight zero, so its output is exactly those zeros) because from_pretrained refuses
  a folder whose required text_encoder_3 is null; loading it with text_encoder_3=None gives identical images.
"""
from __future__ import annotations

import torch

from .architecture import LATENT_CHANNELS, LATENT_SIZE, TEXT_DIM

PROJECTION_DIM = 32  # each CLIP encoder's pooled projection
SDXL_TIME_DIM = 8
SD3_WIDTH, SD3_HEADS, SD3_LAYERS = 64, 4, 6


def clip_from_testbed(te_sd1, projection: bool):
    """A three-layer CLIP encoder whose first two layers (and embeddings, final norm) are the SD 1.x test bed's."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    c = te_sd1.config
    config = CLIPTextConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers + 1, num_attention_heads=c.num_attention_heads,
        max_position_embeddings=c.max_position_embeddings, bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
        pad_token_id=c.pad_token_id, projection_dim=PROJECTION_DIM, hidden_act=c.hidden_act)
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)
    # CLIPTextModel and CLIPTextModelWithProjection name their weights differently (with / without "text_model."
    # in transformers 5): copy between the inner text transformers, which are named alike.
    src = getattr(te_sd1, "text_model", te_sd1).state_dict()
    last = c.num_hidden_layers - 1
    inner = getattr(model, "text_model", model)
    state = inner.state_dict()
    for key in state:
        if key in src:
            state[key] = src[key].clone()
        elif f"layers.{last + 1}." in key:
            state[key] = src[key.replace(f"layers.{last + 1}.", f"layers.{last}.")].clone()
    inner.load_state_dict(state)
    return model


def build_sdxl_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        block_out_channels=(32, 64), layers_per_block=2, norm_num_groups=16,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=2 * TEXT_DIM, attention_head_dim=4, transformer_layers_per_block=1,
        addition_embed_type="text_time", addition_time_embed_dim=SDXL_TIME_DIM,
        projection_class_embeddings_input_dim=PROJECTION_DIM + 6 * SDXL_TIME_DIM,
    )


@torch.no_grad()
def warm_start_sdxl_unet(unet_xl, unet_sd1) -> None:
    """Copy the SD 1.x UNet (one layer per down block, two per up block) into the SDXL layout (two / three)."""
    src = unet_sd1.state_dict()
    state = unet_xl.state_dict()
    up_map = {0: 0, 2: 1}  # SDXL up layer -> SD 1.x up layer; layer 1 is new
    for key in list(state):
        parts = key.split(".")
        mapped = None
        if parts[0] == "down_blocks" and parts[2] in ("resnets", "attentions"):
            if parts[3] == "0":
                mapped = key
        elif parts[0] == "up_blocks" and parts[2] in ("resnets", "attentions"):
            layer = int(parts[3])
            if layer in up_map:
                mapped = ".".join(parts[:3] + [str(up_map[layer])] + parts[4:])
        elif parts[0] != "add_embedding":
            mapped = key
        if mapped is not None and mapped in src:
            value = src[mapped]
            if value.shape != state[key].shape:  # cross-attention k/v: SD 1.x reads the first encoder only
                assert value.shape[0] == state[key].shape[0] and value.shape[1] * 2 == state[key].shape[1], key
                value = torch.cat([value, torch.zeros_like(value)], dim=1)
            state[key] = value.clone()
            continue
        new_layer = parts[0] in ("down_blocks", "up_blocks") and parts[2] in ("resnets", "attentions")
        if new_layer and parts[2] == "resnets" and parts[4] == "conv2":
            state[key].zero_()  # resnet output = shortcut(input)
        elif new_layer and parts[2] == "resnets" and parts[4] == "conv_shortcut":
            w = state[key]
            if parts[5] == "weight":  # keep the incoming hidden state, ignore the concatenated skip
                w.zero_()
                out = w.shape[0]
                w[:, :out, 0, 0] = torch.eye(out)
            else:
                w.zero_()
        elif new_layer and parts[2] == "attentions" and parts[4] == "proj_out":
            state[key].zero_()  # transformer output = residual
        elif parts[0] == "add_embedding" and parts[1] == "linear_2":
            state[key].zero_()  # no added condition at first
    unet_xl.load_state_dict(state)


def build_sd3_transformer():
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=LATENT_SIZE, patch_size=2, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        num_layers=SD3_LAYERS, attention_head_dim=SD3_WIDTH // SD3_HEADS, num_attention_heads=SD3_HEADS,
        joint_attention_dim=2 * TEXT_DIM, caption_projection_dim=SD3_WIDTH,
        pooled_projection_dim=2 * PROJECTION_DIM, pos_embed_max_size=LATENT_SIZE,
    )


def zero_t5(width: int, folder):
    """A one-layer T5 encoder with every weight zero (its output is exactly zero: RMS norm of zero is zero) and a
    T5 tokenizer over the test-bed words (a unigram vocabulary list, no sentencepiece file), written to `folder`."""
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    from .shapes import vocabulary_words

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0) for w in vocabulary_words()]
    T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(str(folder))
    tokenizer = T5Tokenizer.from_pretrained(str(folder))
    model = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=width, d_kv=4, d_ff=4, num_layers=1,
                                    num_heads=1, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model.eval(), tokenizer


def sdxl_scheduler():
    from diffusers import EulerDiscreteScheduler

    from .architecture import scheduler_kwargs

    return EulerDiscreteScheduler(**scheduler_kwargs(), steps_offset=1, timestep_spacing="leading",
                                  prediction_type="epsilon")


def sd3_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
