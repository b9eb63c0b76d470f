"""What every model family provides to the trainer. The loop asks the family; it never branches on it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Conditioning:
    """The keyword tensors a denoiser takes besides x and t, one row per sample (dim 0).

    SD 1.x: {"encoder_hidden_states"}; SDXL adds {"added_cond_kwargs": {"text_embeds", "time_ids"}};
    SD3: {"encoder_hidden_states", "pooled_projections"}. Nested dicts are allowed one level deep.
    """

    kwargs: dict[str, Any]

    def _map(self, fn) -> "Conditioning":
        return Conditioning({k: ({kk: fn(vv) for kk, vv in v.items()} if isinstance(v, dict) else fn(v))
                             for k, v in self.kwargs.items()})

    def rows(self, idx) -> "Conditioning":
        return self._map(lambda t: t[idx.to(t.device)])

    def repeat(self, n: int) -> "Conditioning":
        """A one-row conditioning (e.g. the empty prompt) for n samples."""
        return self._map(lambda t: t.expand(n, *t.shape[1:]))

    def to(self, device=None, dtype=None) -> "Conditioning":
        return self._map(lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else None))

    @staticmethod
    def cat(parts: list["Conditioning"]) -> "Conditioning":
        import torch

        first = parts[0].kwargs
        out = {}
        for k, v in first.items():
            if isinstance(v, dict):
                out[k] = {kk: torch.cat([p.kwargs[k][kk] for p in parts]) for kk in v}
            else:
                out[k] = torch.cat([p.kwargs[k] for p in parts])
        return Conditioning(out)


class NoiseProcess:
    """How training noises a clean latent, what the denoiser should predict, and the pure-noise input."""

    def draw_t(self, n: int, t_min: int, t_max: int, gen):
        """n training times in [t_min, t_max) on the 0..1000 scale, drawn on the CPU generator."""
        raise NotImplementedError

    def add_noise(self, x0, noise, t):
        raise NotImplementedError

    def target(self, x0, noise, t):
        raise NotImplementedError

    def pure_noise_t(self, n: int, device):
        """The time at which the input is pure noise x_T (output preservation)."""
        raise NotImplementedError

    target_name = ""  # what target() is, in words (reports)

    def swap_scale(self, t: float) -> float:
        """k(t): a denoiser that takes x_t of one image for x_t of another (clean latents z, z') errs on its target
        by k(t)·(z − z')² per element. It converts a pair's latent distance into DPO margin units."""
        raise NotImplementedError


class DDPMProcess(NoiseProcess):
    """Discrete-time diffusion (SD 1.x/2.x, SDXL): epsilon or v-prediction, integer timesteps."""

    def __init__(self, scheduler_config):
        from diffusers import DDPMScheduler

        from ..errors import UserError

        self.scheduler = DDPMScheduler.from_config(scheduler_config)
        self.prediction = self.scheduler.config.prediction_type
        if self.prediction not in ("epsilon", "v_prediction"):
            raise UserError(f"prediction type {self.prediction!r} is not supported (epsilon or v_prediction)")
        self.num_train_timesteps = self.scheduler.config.num_train_timesteps
        self.target_name = self.prediction

    def draw_t(self, n, t_min, t_max, gen):
        import torch

        return torch.randint(t_min, min(t_max, self.num_train_timesteps), (n,), generator=gen)

    def add_noise(self, x0, noise, t):
        return self.scheduler.add_noise(x0, noise, t)

    def target(self, x0, noise, t):
        if self.prediction == "v_prediction":
            return self.scheduler.get_velocity(x0, noise, t)
        return noise

    def pure_noise_t(self, n, device):
        import torch

        return torch.full((n,), self.num_train_timesteps - 1, device=device, dtype=torch.long)

    def swap_scale(self, t: float) -> float:
        # ε-error √ᾱ/√(1−ᾱ)·(z − z'), squared; for v the x0 error is divided by √(1−ᾱ) instead
        a = float(self.scheduler.alphas_cumprod[int(t)])
        return a / (1 - a) if self.prediction == "epsilon" else 1 / (1 - a)


class Family:
    """One model family. Subclasses set the class attributes and override what differs."""

    name = ""
    architecture = ""  # modelspec.architecture
    base_version = ""  # kohya's ss_base_model_version
    pipeline_class = ""  # diffusers text-to-image pipeline class name
    img2img_class = ""  # diffusers image-to-image pipeline class name (SDEdit twins)
    denoiser_attr = "unet"
    default_targets: tuple[str, ...] = ()
    # target suffixes whose input is the prompt's encoding alone (cross-attention keys and values): the concept's
    # directions there are those of its prompts, not of its images (concept_directions.py)
    prompt_side_targets: tuple[str, ...] = ()
    lr_base = 3e-4  # official coupling: lr = lr_base * 100 / beta
    lambda_base = 1e6  # official coupling: lambda = lambda_base * beta / 100
    # (tokenizer, text encoder) attributes of the CLIP encoders whose token embeddings the white-box attacks
    # (Concept Inversion, UnlearnDiffAtk) optimise and whose vocabulary Ring-A-Bell searches; none: refused
    token_encoders: tuple[tuple[str, str], ...] = (("tokenizer", "text_encoder"),)
    load_dtype: str | None = None  # weights loaded in this dtype when none is asked for (None: float32)
    recipe_resolution: int | None = None  # the official recipe's training resolution; None: the native one

    # -- loading and pipelines --
    def pipeline_cls(self):
        import diffusers

        return getattr(diffusers, self.pipeline_class)

    def load_kwargs(self, options: dict) -> dict:
        """Extra from_pretrained/from_single_file kwargs (e.g. SD3 without T5)."""
        return {}

    def after_load(self, pipe, options: dict) -> None:
        """Adjust a loaded pipeline to what its file says but diffusers cannot see: single-file v-prediction
        checkpoints (a `v_pred` key, often `ztsnr`; see models.load_options) get their scheduler set here."""
        overrides = {k: options[k] for k in ("prediction_type", "rescale_betas_zero_snr") if k in options}
        if overrides:
            pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, **overrides)

    def img2img(self, pipe):
        """The SDEdit pipeline on the same loaded modules: no second copy of the model."""
        import inspect

        import diffusers

        cls = getattr(diffusers, self.img2img_class)
        extra = {"requires_safety_checker": False} if "requires_safety_checker" in inspect.signature(
            cls.__init__).parameters else {}  # else a long warning on every run
        edit = cls(**pipe.components, **extra)
        edit.set_progress_bar_config(disable=True)
        return edit

    def denoiser(self, pipe):
        return getattr(pipe, self.denoiser_attr)

    def native_resolution(self, pipe) -> int:
        return self.denoiser(pipe).config.sample_size * pipe.vae_scale_factor

    def text_modules(self, pipe) -> list:
        """The frozen text encoders, moved off the device once their outputs are cached."""
        return [getattr(pipe, n) for n in ("text_encoder", "text_encoder_2", "text_encoder_3")
                if getattr(pipe, n, None) is not None]

    def clip_encoders(self, pipe) -> list[tuple]:
        """(tokenizer, text encoder) of each of `token_encoders` the pipeline has."""
        return [(getattr(pipe, t), getattr(pipe, e)) for t, e in self.token_encoders
                if getattr(pipe, e, None) is not None]

    # -- training --
    def encode_prompts(self, pipe, prompts: list[str], device, resolution: int) -> Conditioning:
        """Conditioning for each prompt (no classifier-free guidance), float32 on the device."""
        import torch

        with torch.no_grad():
            return self.conditioning(pipe, prompts, device, resolution)

    def conditioning(self, pipe, prompts: list[str], device, resolution: int) -> Conditioning:
        """encode_prompts with autograd as the caller has it: the attacks differentiate through the encoders."""
        raise NotImplementedError

    def noise_process(self, pipe, resolution: int | None = None) -> NoiseProcess:
        return DDPMProcess(pipe.scheduler.config)

    def predict(self, denoiser, x, t, cond: Conditioning):
        return denoiser(x, t, **cond.kwargs).sample

    def latent_scale(self, vae) -> tuple[float, float]:
        """(scaling, shift): z = (posterior sample - shift) * scaling."""
        return float(vae.config.scaling_factor), float(getattr(vae.config, "shift_factor", None) or 0.0)

    # -- export --
    scale_in_weights = False  # export() multiplies alpha / rank into lora_B (the diffusers-named formats)

    def unexportable(self, modules: list[str]) -> list[str]:
        """The denoiser modules (diffusers paths) that the saved file has no name for; said before training."""
        return []

    def export(self, peft_state: dict, alpha: float) -> dict:
        """The adapter's tensors, named as the hosts users load them in expect."""
        from ..export import peft_to_kohya

        return peft_to_kohya(peft_state, alpha, prefix=self.denoiser_attr)

    def metadata(self, pipe=None) -> dict:
        """Per-family adapter metadata; given the pipeline, a family may record what varies by checkpoint (here the
        prediction type of an epsilon/v model, in kohya's modelspec words)."""
        meta = {"ss_base_model_version": self.base_version, "modelspec.architecture": self.architecture,
                "ss_v2": str(self.name == "sd2")}
        prediction = _prediction_type(pipe)
        if prediction is not None:
            meta["modelspec.prediction_type"] = prediction
        return meta


def _prediction_type(pipe) -> str | None:
    """"epsilon" or "v" for a DDPM-style scheduler (modelspec's spelling); None for flow matching or no pipeline."""
    kind = getattr(getattr(getattr(pipe, "scheduler", None), "config", None), "get", lambda *_: None)(
        "prediction_type")
    return {"epsilon": "epsilon", "v_prediction": "v"}.get(kind)
