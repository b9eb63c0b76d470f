"""Stable Diffusion 3 / 3.5: an MMDiT transformer, three text encoders (T5 optional), rectified-flow noise.

The recipe is naver-ai/DUO's train/unlearn-sd3.py with scripts/sd3-nudity.sh:
- conditioning: the empty prompt for both images (the script is run without --given_prompt) and for the
  output-preservation rows, encoded by the script's own encode_prompt: CLIP-L and CLIP-G penultimate hidden states
  concatenated and zero-padded to T5's width, followed by T5 at max_sequence_length = 77 (not the pipeline's 256),
  and the two pooled CLIP embeddings. diffusers' encode_prompt with max_sequence_length=77 computes the same.
- noise, σ draw, preconditioning: flow.FlowMatchProcess("official").
- LoRA r = alpha = 32 on to_q/to_k/to_v/to_out.0 (the image stream's attention; the context projections add_*_proj
  and to_add_out are not trained), lr = 3e-5·100/β, λ = 1e6·β/100, resolution 512 (the script's default; the
  shell script does not set it), 1000 steps, batch 1, fp16, AdamW weight decay 1e-2; the paper's β is 500.
"""
from __future__ import annotations

from .base import Conditioning, Family

T5_TOKENS = 77  # the official script's --max_sequence_length default
TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


class SD3(Family):
    name = "sd3"
    architecture = "stable-diffusion-3-medium/lora"
    base_version = "sd3"
    pipeline_class = "StableDiffusion3Pipeline"
    img2img_class = "StableDiffusion3Img2ImgPipeline"
    denoiser_attr = "transformer"
    default_targets = TARGETS
    lr_base = 3e-5
    lambda_base = 1e6
    recipe_resolution = 512
    precondition = True  # the official --precondition_outputs default: compare x0 estimates
    # the attacks optimise the CLIP encoders' token embeddings; T5 (when loaded) gets the prompt as written, which
    # is also what it gets when the found prompt is generated
    token_encoders = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))

    def load_kwargs(self, options):
        # diffusers' documented way to run SD3 without T5: its embeddings become zeros of the same shape.
        if options.get("drop_t5"):
            return {"text_encoder_3": None, "tokenizer_3": None}
        return {}

    def conditioning(self, pipe, prompts, device, resolution):
        hidden, _, pooled, _ = pipe.encode_prompt(
            prompt=list(prompts), prompt_2=None, prompt_3=None, device=device, num_images_per_prompt=1,
            do_classifier_free_guidance=False, max_sequence_length=T5_TOKENS)
        return Conditioning({"encoder_hidden_states": hidden.float(), "pooled_projections": pooled.float()})

    def noise_process(self, pipe, resolution: int | None = None):
        from .flow import FlowMatchProcess

        return FlowMatchProcess(pipe.scheduler.config, schedule="official", precondition=self.precondition)

    def predict(self, denoiser, x, t, cond):
        from .flow import x0_estimate

        velocity = denoiser(hidden_states=x, timestep=t, **cond.kwargs).sample
        return x0_estimate(velocity, x, t) if self.precondition else velocity

    scale_in_weights = True

    def export(self, peft_state, alpha):
        from ..export import peft_to_diffusers

        return peft_to_diffusers(peft_state, alpha, prefix=self.denoiser_attr)

    def metadata(self, pipe=None):
        meta = super().metadata(pipe)
        if pipe is not None:
            meta["modelspec.architecture"] = variant_architecture(self.denoiser(pipe).config)
            meta["duo.t5_encoder"] = "dropped" if getattr(pipe, "text_encoder_3", None) is None else "used"
        return meta


def variant_architecture(config) -> str:
    """SD3 Medium, SD3.5 Medium (MMDiT-X: extra self-attention in the first blocks) or SD3.5 Large (38 blocks),
    in kohya's modelspec spelling ("stable-diffusion-3" + variant)."""
    if config.num_layers >= 38:
        return "stable-diffusion-3-5-large/lora"
    if getattr(config, "dual_attention_layers", None):
        return "stable-diffusion-3-5-medium/lora"
    return "stable-diffusion-3-medium/lora"
