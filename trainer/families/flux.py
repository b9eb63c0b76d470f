"""FLUX.1 [dev] and [schnell]: a 12B MMDiT (19 double-stream + 38 single-stream blocks), CLIP-L pooled + T5-XXL
states, a 16-channel VAE whose latents the transformer takes packed in 2x2 patches, rectified-flow noise.

There is no official DUO recipe for Flux; this one carries naver-ai/DUO's SD3 recipe (sd3.py) over, changing only
what Flux itself dictates:
- noise, target, preconditioning: flow.FlowMatchProcess("official"), as for SD3: σ drawn as u ~ U[t_min, t_max)/1000
  indexing the model's *shifted* training table, the x0-estimate comparison, pure noise at the table's last entry.
  Flux's scheduler shifts by resolution (use_dynamic_shifting: μ = calculate_shift(image_seq_len), σ' = e^μ σ /
  (1 + (e^μ − 1) σ)), so the table is built with the shift Flux's own sampler applies at the training resolution,
  s = e^μ: 3.158 at 1024 px (image_seq_len 4096, μ = max_shift 1.15), next to SD3's fixed 3. That keeps the SD3
  recipe's meaning (t_max 750 = the noisy three quarters of the sampling trajectory users run). Indexing the table
  as constructed would silently train unshifted σ, because FlowMatchEulerDiscreteScheduler does not apply `shift`
  when use_dynamic_shifting is on (diffusers' train_dreambooth_lora_flux.py does exactly that). [schnell] has no
  dynamic shifting and shift 1.0 (BFL samples it unshifted): its table is used as it is.
- guidance ([dev] only, guidance-distilled): held at 3.5, the value users sample at (FluxPipeline's and BFL's
  default, ComfyUI's FluxGuidance default) and what diffusers' train_dreambooth_lora_flux.py passes by default
  (--guidance_scale 3.5): the pairs are generated at 3.5, and the policy and reference are compared on the function
  users run. [schnell] has no guidance embedding: none is passed.
- conditioning: the empty prompt (as the SD3 recipe), encoded by FluxPipeline.encode_prompt: T5 states at the
  sequence length BFL's reference uses (512 for [dev], 256 for [schnell]) and CLIP-L's pooled output.
- LoRA on to_q/to_k/to_v/to_out.0, diffusers' Flux LoRA trainer's targets: the image stream's attention in the
  double blocks and the joint attention projections in the single blocks (which have no to_out); the text stream's
  add_*_proj / to_add_out are not trained, as for SD3. lr = 3e-5·100/β and λ = 1e6·β/100: the SD3 script's coupling
  (same preconditioned flow loss, so the DPO term has the same scale); not tuned on Flux. Native resolution 1024.

Latents stay 4D (B, 16, H, W) everywhere in the loop; predict() packs them into (B, HW/4, 64) tokens with their
image ids, and unpacks the transformer's output back: the noise process, the cache and the loss never see packing.

Memory (12B): the frozen transformer can be quantised with bitsandbytes (load option quantize = "nf4" | "int8"):
through diffusers' BitsAndBytesConfig at load time where a GPU is there (load_kwargs), or in place after loading
(after_load; the CPU, and single-file loads). peft trains LoRA on bitsandbytes' Linear4bit / Linear8bitLt layers.
"""
from __future__ import annotations

import math

from .base import Conditioning, Family

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
GUIDANCE = 3.5  # [dev] only: see the module docstring
T5_TOKENS = {"dev": 512, "schnell": 256}  # BFL's reference: max_length 256 for schnell, 512 for dev
QUANTIZE = ("nf4", "int8")
_BLOCKS = ("transformer_blocks.", "single_transformer_blocks.")  # the 12B bulk; embedders and the head stay as is


def variant(transformer_config) -> str:
    """[dev] has a guidance embedding (guidance_in in BFL's checkpoints), [schnell] has none."""
    return "dev" if getattr(transformer_config, "guidance_embeds", False) else "schnell"


def image_seq_len(resolution: int, vae_scale_factor: int) -> int:
    side = resolution // vae_scale_factor // 2
    return side * side


def dynamic_shift(scheduler_config, resolution: int, vae_scale_factor: int) -> float:
    """The shift s = e^μ Flux's sampler applies at this resolution (diffusers' calculate_shift, BFL's get_lin_function),
    or the scheduler's static shift when it does not shift by resolution ([schnell]: 1.0)."""
    cfg = dict(scheduler_config)
    if not cfg.get("use_dynamic_shifting"):
        return float(cfg.get("shift", 1.0))
    base_len, max_len = cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096)
    base_shift, max_shift = cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15)
    m = (max_shift - base_shift) / (max_len - base_len)
    mu = image_seq_len(resolution, vae_scale_factor) * m + base_shift - m * base_len
    return math.exp(mu)


def pack(x):
    """(B, C, H, W) latents -> (B, H/2 * W/2, 4C) tokens, as FluxPipeline._pack_latents."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens, h: int, w: int):
    """The inverse of pack for latents of height h and width w."""
    b, _, d = tokens.shape
    c = d // 4
    return tokens.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def image_ids(h: int, w: int, device, dtype):
    """Position ids of the packed tokens (0, row, column), as FluxPipeline._prepare_latent_image_ids."""
    import torch

    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


def bnb_config(kind: str, compute_dtype=None):
    """diffusers' BitsAndBytesConfig for the frozen transformer: NF4 (double quantisation, as QLoRA) or LLM.int8."""
    import torch
    from diffusers import BitsAndBytesConfig

    from ..errors import UserError

    if kind not in QUANTIZE:
        raise UserError(f"quantize {kind!r}: choose one of {', '.join(QUANTIZE)}")
    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype or torch.bfloat16)


def _require_bnb():
    from ..errors import UserError

    try:
        import bitsandbytes as bnb
    except ImportError:
        raise UserError("quantized Flux training needs bitsandbytes: pip install 'duo-unlearn[flux]'") from None
    return bnb


def quantization(transformer) -> str | None:
    """'nf4', 'int8' or None: what the transformer's linear layers are stored as."""
    for module in transformer.modules():
        name = type(module).__name__
        if name == "Linear4bit":
            return "nf4"
        if name == "Linear8bitLt":
            return "int8"
    return None


def quantize_in_place(transformer, kind: str, compute_dtype=None) -> int:
    """Replace the nn.Linear layers of the transformer blocks by bitsandbytes' NF4 / int8 layers, weights quantised
    where they are (bitsandbytes quantises on the CPU too). Returns how many layers were replaced."""
    import torch

    from ..errors import UserError

    if kind not in QUANTIZE:
        raise UserError(f"quantize {kind!r}: choose one of {', '.join(QUANTIZE)}")
    bnb = _require_bnb()
    if quantization(transformer):
        return 0
    compute_dtype = compute_dtype or (transformer.dtype if transformer.dtype != torch.float16 else torch.float32)
    replaced = 0
    for name, module in list(transformer.named_modules()):
        if not isinstance(module, torch.nn.Linear) or not name.startswith(_BLOCKS):
            continue
        weight = module.weight.data
        device = weight.device
        if kind == "nf4":
            new = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=module.bias is not None,
                                    compute_dtype=compute_dtype, quant_type="nf4", compress_statistics=True,
                                    device="meta")
            new.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4",  # quantised in place
                                           compress_statistics=True, module=new)
        else:
            new = bnb.nn.Linear8bitLt(module.in_features, module.out_features, bias=module.bias is not None,
                                      has_fp16_weights=False, device="meta")
            # bitsandbytes quantises int8 only on a move from the CPU
            new.weight = bnb.nn.Int8Params(weight.to("cpu"), requires_grad=False, has_fp16_weights=False)
        if module.bias is not None:
            new.bias = torch.nn.Parameter(module.bias.data, requires_grad=False)
        new = new.to(device)  # the quantisation happens on this move
        parent_name, _, child = name.rpartition(".")
        setattr(transformer.get_submodule(parent_name), child, new)
        replaced += 1
    # what diffusers' own quantiser marks, and peft reads to dispatch LoRA onto the bitsandbytes layers
    setattr(transformer, "is_loaded_in_4bit" if kind == "nf4" else "is_loaded_in_8bit", True)
    return replaced


class Flux(Family):
    name = "flux"
    architecture = "flux-1-dev/lora"
    base_version = "flux1"
    pipeline_class = "FluxPipeline"
    img2img_class = "FluxImg2ImgPipeline"
    denoiser_attr = "transformer"
    default_targets = TARGETS
    lr_base = 3e-5
    lambda_base = 1e6
    recipe_resolution = None  # native: 1024
    load_dtype = "bfloat16"  # 12B parameters: float32 would need 48 GB of memory for the transformer alone
    precondition = True  # as the SD3 recipe: compare x0 estimates
    guidance = GUIDANCE
    # the prompt's tokens reach the transformer through T5 (CLIP gives only the pooled vector): the token-embedding
    # attacks, which optimise CLIP token embeddings, are not implemented for Flux
    token_encoders = ()

    # -- loading --
    def load_kwargs(self, options):
        """With a GPU, diffusers quantises the transformer while loading it (never held unquantised); on the CPU
        diffusers' bitsandbytes quantiser refuses to run, and after_load quantises in place instead."""
        kind = options.get("quantize")
        if not kind:
            return {}
        import torch
        from diffusers import PipelineQuantizationConfig

        if kind not in QUANTIZE:
            from ..errors import UserError

            raise UserError(f"quantize {kind!r}: choose one of {', '.join(QUANTIZE)}")
        _require_bnb()
        if not torch.cuda.is_available():
            return {}
        return {"quantization_config": PipelineQuantizationConfig(
            quant_mapping={"transformer": bnb_config(kind)})}

    def after_load(self, pipe, options):
        super().after_load(pipe, options)
        kind = options.get("quantize")
        if kind and not quantization(pipe.transformer):
            quantize_in_place(pipe.transformer, kind)

    def native_resolution(self, pipe):
        return int(pipe.default_sample_size * pipe.vae_scale_factor)  # 128 * 8 = 1024 for FLUX.1

    # -- training --
    def conditioning(self, pipe, prompts, device, resolution):
        import torch

        kind = variant(pipe.transformer.config)
        hidden, pooled, _ = pipe.encode_prompt(prompt=list(prompts), prompt_2=None, device=device,
                                               num_images_per_prompt=1, max_sequence_length=T5_TOKENS[kind])
        kwargs = {"encoder_hidden_states": hidden.float(), "pooled_projections": pooled.float()}
        if kind == "dev":  # per row, so that it follows the conditioning through rows/repeat/cat
            kwargs["guidance"] = torch.full((hidden.shape[0],), float(self.guidance), device=hidden.device)
        return Conditioning(kwargs)

    def noise_process(self, pipe, resolution: int | None = None):
        """The σ table shifted as Flux's sampler shifts at the training resolution (default: the native one)."""
        from .flow import FlowMatchProcess

        resolution = resolution or self.native_resolution(pipe)
        config = dict(pipe.scheduler.config)
        config.update(use_dynamic_shifting=False, shift=dynamic_shift(config, resolution, pipe.vae_scale_factor))
        return FlowMatchProcess(config, schedule="official", precondition=self.precondition)

    def predict(self, denoiser, x, t, cond):
        from .flow import x0_estimate

        b, _, h, w = x.shape
        kwargs = dict(cond.kwargs)
        hidden = kwargs.pop("encoder_hidden_states")
        velocity = denoiser(
            hidden_states=pack(x), timestep=(t.float() / 1000).to(x.dtype), encoder_hidden_states=hidden,
            txt_ids=hidden.new_zeros(hidden.shape[1], 3), img_ids=image_ids(h, w, x.device, x.dtype),
            guidance=kwargs.pop("guidance", None), return_dict=False, **kwargs)[0]
        velocity = unpack(velocity, h, w)
        return x0_estimate(velocity, x, t) if self.precondition else velocity

    # -- export --
    scale_in_weights = True

    def export(self, peft_state, alpha):
        """diffusers' Flux LoRA names (`transformer.transformer_blocks.0.attn.to_q.lora_A.weight`), alpha baked in:
        diffusers loads them natively; ComfyUI and Forge map each onto its slice of BFL's fused qkv / linear1 weights
        (comfy.utils.flux_to_diffusers, the same table in Forge's packages_3rdparty/comfyui_lora_collection)."""
        from ..export import peft_to_diffusers

        return peft_to_diffusers(peft_state, alpha, prefix=self.denoiser_attr)

    def metadata(self, pipe=None):
        meta = {"ss_base_model_version": self.base_version, "modelspec.architecture": self.architecture,
                "ss_v2": "False"}
        if pipe is not None:
            kind = variant(self.denoiser(pipe).config)
            meta["modelspec.architecture"] = f"flux-1-{kind}/lora"
            meta["duo.flux_variant"] = kind
            meta["duo.guidance"] = str(float(self.guidance)) if kind == "dev" else "none"
            meta["duo.quantized"] = quantization(self.denoiser(pipe)) or "no"
        return meta
