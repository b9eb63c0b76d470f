"""Dataclass configs for every stage, validated once at the edge with a clear message."""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .concept_directions import parse_setting, valid_count
from .detectors import check_detector, no_detector
from .errors import UserError
from .lr_schedule import check_schedule

CONDITIONS = ("empty", "prompt", "unsafe")
# Flux, the largest family supported, is trained at up to 2048 px; 100000 px once filled 24 GB before failing.
MAX_RESOLUTION = 4096
MAX_SAMPLE_STEPS = 1000  # every supported scheduler is trained on 1000 timesteps: a sampler cannot take more
MAX_BATCH = 1024  # pairs (or images) in one step: far more than fits any card, and past it sizes overflow


@dataclass
class LoraConfig:
    rank: int = 32
    alpha: float = 32.0
    target_modules: tuple[str, ...] = ()  # empty: the family's default (self-attention; SD3: its attention)

    def validate(self) -> None:
        if self.rank <= 0:
            raise UserError(f"rank must be a positive integer, got {self.rank}")
        if not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise UserError(f"alpha must be a positive number, got {self.alpha}")
        if any(not isinstance(t, str) or not t.strip() for t in self.target_modules):
            raise UserError(f"target_modules must be module name suffixes, got {self.target_modules!r}")


@dataclass
class TrainConfig:
    """One DUO training run. Defaults are the official recipe (nudity: beta 500)."""

    pairs: str = ""
    model: str = "testbed"
    out: str = "duo_adapter.safetensors"
    config_dir: str | None = None  # diffusers config folder for single-file checkpoints, when offline
    drop_t5: bool = False  # SD3: load without T5 (diffusers' text_encoder_3=None), for small cards
    concept: str = ""
    method: str = "duo"
    esd_eta: float = 1.0  # method "esd": negative guidance scale eta of the ESD target
    beta: float = 500.0
    kappa: float | None = None  # given: β = κ / full-swap margin of the pairs (reward_scale.py), beta ignored
    lr: float | None = None  # None: 3e-4 * 100 / beta
    lr_scheduler: str = "constant"  # the official recipe's; any of lr_schedule.SCHEDULES
    lr_warmup_steps: int = 0
    lr_cycles: int = 1  # cosine_with_restarts: how many cosine cycles over the run
    lam: float | None = None  # None: 1e6 * beta / 100
    lam_retain: float = 0.0  # output preservation on the pair folder's retain set (retain_set.py); 0: off
    # the retain term's timesteps, drawn in [retain_t_min, retain_t_max); None: the pairs' [t_min, t_max)
    retain_t_min: int | None = None
    retain_t_max: int | None = None
    # >0: each LoRA reads only its layer's N input directions most particular to the concept against the retain set
    # (concept_directions.py; needs the retain set); 0 < N < 1: that share of each layer's width; "auto": those
    # whose μ is above the layer's mean; 0: off
    concept_directions: int | float | str = 0
    close_concepts: tuple[str, ...] = ()  # words of retain prompts whose images weigh close_weight more there
    close_weight: float = 0.0
    steps: int = 1000
    batch_pairs: int = 4
    lora: LoraConfig = field(default_factory=LoraConfig)
    t_min: int = 0
    t_max: int = 750
    shared_t: bool = False  # True: x⁺ and x⁻ of a pair at one timestep (Diffusion-DPO); official DUO draws each its own
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    condition: str = "empty"  # "prompt": each image on its own prompt; "unsafe": both on the unsafe prompt
    mixed_precision: str = "auto"  # auto: bf16 (else fp16) on a GPU, fp32 on the CPU; or no/fp32, fp16, bf16
    gradient_checkpointing: str = "auto"  # auto: on when the estimated need exceeds free memory; on; off
    resolution: int | None = None  # pair images are trained at this size; None: the model's native size
    micro_batch_pairs: int | None = None  # pairs per forward pass; gradients accumulate to batch_pairs
    use_8bit_adam: bool = False
    checkpoint_every: int = 0  # 0: no intermediate checkpoints
    checkpoint_dir: str | None = None  # default: <out>.checkpoints
    resume: bool = False
    preview_every: int = 0  # 0: previews only at the end of training (if preview_prompts)
    preview_prompts: tuple[str, ...] = ()
    preview_seed: int = 0
    preview_steps: int = 25
    preview_guidance: float = 7.5
    stop_every: int = 0  # >0: every N steps sample the unsafe prompts, stop once the concept is gone (erasure_stop)
    stop_detector: str = "none"  # what tells whether the concept is still in those samples
    stop_erased: float = 0.85  # fraction of the check images without the concept that stops training
    on_policy_pairs: bool = False  # check images that still show the concept become pairs (on_policy_pairs.py)
    seed: int = 0
    device: str = "auto"
    overwrite: bool = False  # replace an existing adapter file of the same name

    def runtime_config(self):
        from .runtime import RuntimeConfig

        return RuntimeConfig(self.device, self.mixed_precision, self.gradient_checkpointing)

    def learning_rate_for(self, lr_base: float = 3e-4) -> float:
        """The official coupling lr = lr_base·100/β (lr_base: the family's, 3e-4 for SD, 3e-5 for SD3)."""
        if self.lr is not None:
            return self.lr
        return 1e-4 if self.method == "esd" else lr_base * 100 / self.beta  # ESD has no beta to couple to

    @property
    def learning_rate(self) -> float:
        return self.learning_rate_for()

    def preservation_weight_for(self, lambda_base: float = 1e6) -> float:
        return self.lam if self.lam is not None else lambda_base * self.beta / 100

    @property
    def preservation_weight(self) -> float:
        return self.preservation_weight_for()

    @property
    def retain_t_range(self) -> tuple[int, int]:
        """Where the retain term's timesteps are drawn: its own band where one is given, else the pairs'."""
        return (self.t_min if self.retain_t_min is None else self.retain_t_min,
                self.t_max if self.retain_t_max is None else self.retain_t_max)

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.checkpoint_dir) if self.checkpoint_dir else Path(str(self.out) + ".checkpoints")

    def validate(self) -> None:
        def positive(name: str, value: float) -> None:
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise UserError(f"{name} must be a positive number, got {value!r}")

        if self.method not in ("duo", "esd"):
            raise UserError(f"method must be 'duo' or 'esd', got {self.method!r}")
        positive("beta", self.beta)
        if self.kappa is not None:
            positive("kappa", self.kappa)
        if self.method == "esd":
            positive("esd_eta", self.esd_eta)
        positive("steps", self.steps)
        positive("batch_pairs", self.batch_pairs)
        if self.lr is not None:
            positive("lr", self.lr)
        check_schedule(self.lr_scheduler, self.lr_warmup_steps, self.lr_cycles, self.steps)
        if self.lam is not None and not (math.isfinite(self.lam) and self.lam >= 0):
            raise UserError(f"lam must be zero or positive, got {self.lam!r}")
        if not (isinstance(self.lam_retain, (int, float)) and math.isfinite(self.lam_retain) and self.lam_retain >= 0):
            raise UserError(f"lam_retain must be zero or positive, got {self.lam_retain!r}")
        if not valid_count(self.concept_directions):
            raise UserError("concept_directions must be 0 (off), a positive integer, a share of each layer's width "
                            "between 0 and 1, or \"auto\", "
                            f"got {self.concept_directions!r}")
        if not (isinstance(self.close_weight, (int, float)) and math.isfinite(self.close_weight)
                and self.close_weight >= 0):
            raise UserError(f"close_weight must be zero or positive, got {self.close_weight!r}")
        if any(not isinstance(c, str) or not c.strip() for c in self.close_concepts):
            raise UserError(f"close_concepts must be words of the retain prompts, got {self.close_concepts!r}")
        if self.close_weight and not self.close_concepts:
            raise UserError("close_weight needs close_concepts: the words that mark the retain prompts to weigh")
        for name, value in (("learning rate", self.learning_rate), ("lambda", self.preservation_weight)):
            if not math.isfinite(value):  # derived from beta: 1e308 overflows
                raise UserError(f"the {name} derived from beta={self.beta:g} is {value}: give a smaller beta, "
                                "or --lr and --lam explicitly")
        for name in ("preview_steps", "resolution", "micro_batch_pairs"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value > 0):
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        if self.resolution is not None and self.resolution > MAX_RESOLUTION:
            raise UserError(f"resolution {self.resolution} is over {MAX_RESOLUTION}: no supported model trains that "
                            "large, and the images alone would not fit in memory")
        check_sample_steps("preview_steps", self.preview_steps)
        for name in ("batch_pairs", "micro_batch_pairs"):
            check_batch(name, getattr(self, name))
        if self.resolution is not None and self.resolution % 8:
            raise UserError(f"resolution must be a multiple of 8, got {self.resolution}")
        if not (math.isfinite(self.preview_guidance) and self.preview_guidance >= 0):
            raise UserError(f"preview_guidance must be zero or positive, got {self.preview_guidance!r}")
        if not (0 <= self.t_min < self.t_max <= 1000):
            raise UserError(f"need 0 <= t_min < t_max <= 1000, got t_min={self.t_min}, t_max={self.t_max}")
        lo, hi = self.retain_t_range
        if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo < hi <= 1000):
            raise UserError(f"need 0 <= retain_t_min < retain_t_max <= 1000, got retain_t_min={lo}, "
                            f"retain_t_max={hi}")
        if self.condition not in CONDITIONS:
            raise UserError(f"condition must be one of {', '.join(CONDITIONS)}, got {self.condition!r}")
        self.runtime_config().validate()
        if not (isinstance(self.stop_erased, (int, float)) and 0 < self.stop_erased <= 1):
            raise UserError(f"stop_erased must be a fraction in (0, 1], got {self.stop_erased!r}")
        check_detector(self.stop_detector)
        if self.stop_every and no_detector(self.stop_detector):
            raise UserError("stop_every needs stop_detector: the detector that tells whether the concept is still "
                            "in the samples (nudenet, colour:<name>)")
        if self.on_policy_pairs and not self.stop_every:
            raise UserError("on_policy_pairs takes its pairs from the erasure check's images: set stop_every (and "
                            "stop_detector) too")
        if self.on_policy_pairs and self.method != "duo":
            raise UserError(f"on_policy_pairs adds DUO pairs; method {self.method!r} trains on no pairs of its own")
        for name in ("checkpoint_every", "preview_every", "stop_every", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):  # a NaN grad_clip would turn clipping off unnoticed
                raise UserError(f"{name} must be zero or positive, got {value}")
        check_seed("seed", self.seed)
        check_seed("preview_seed", self.preview_seed)
        if self.checkpoint_every and self.checkpoint_path.exists() and not self.checkpoint_path.is_dir():
            raise UserError(f"checkpoint_dir {self.checkpoint_path} is a file; checkpoints need a folder")
        if self.preview_every and not self.preview_prompts:
            raise UserError("preview_every needs preview prompts to draw (--preview-prompts \"a|b\")")
        if Path(self.out).suffix != ".safetensors":  # ".safetensors" alone is a hidden file with no suffix
            raise UserError(f"the adapter is written as safetensors: --out must end in .safetensors, got {self.out}")
        self.lora.validate()


MAX_SEED = 2**63 - 1  # torch takes a signed 64-bit seed; images within a run add their index to it


def check_sample_steps(name: str, steps: int | None) -> None:
    if steps is not None and steps > MAX_SAMPLE_STEPS:
        raise UserError(f"{name} must be at most {MAX_SAMPLE_STEPS} (the model's schedule has {MAX_SAMPLE_STEPS} "
                        f"timesteps), got {steps}")


def check_batch(name: str, size: int | None) -> None:
    if size is not None and size > MAX_BATCH:
        raise UserError(f"{name} must be at most {MAX_BATCH}, got {size}")


def check_seed(name: str, seed: int, most: int = MAX_SEED) -> None:
    if not 0 <= seed <= most:
        raise UserError(f"{name} must be a whole number from 0 to {most}, got {seed}")


def _typed(where: str, name: str, hint, value):
    """`value` as the field's type, or a UserError naming the setting: TOML gives strings, numbers and booleans
    as written, and a dataclass takes anything, so "no" would count as true for a bool and 2.7 steps would fail
    deep inside training."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    kinds = [k for k in typing.get_args(hint) if k is not type(None)] if union else [hint]
    if value is None and len(kinds) < len(typing.get_args(hint)):
        return None
    kind = kinds[0] if len(kinds) == 1 else None
    if typing.get_origin(kind) is tuple:
        items = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        item_kind = typing.get_args(kind)[0]
        if item_kind is str and not all(isinstance(i, str) for i in items):
            raise UserError(f"{where}: {name} must be a list of strings, got {value!r}")
        return items
    checks = {bool: (lambda v: isinstance(v, bool), "true or false"),
              int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
              float: (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
              str: (lambda v: isinstance(v, str), "a string")}
    if kind in checks:
        ok, wanted = checks[kind]
        if not ok(value):
            raise UserError(f"{where}: {name} must be {wanted}, got {value!r}")
        return float(value) if kind is float else value
    return value


def from_mapping(cls: type, data: dict[str, Any], where: str = "config"):
    """Build a (nested) dataclass from a dict such as a TOML table, refusing unknown keys and wrong types by name."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        default = getattr(cls(), name) if name != "pairs" else ""
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise UserError(f"{where}: [{name}] must be a table")
            kwargs[name] = from_mapping(type(default), value, f"{where} [{name}]")
        else:
            kwargs[name] = _typed(where, name, hints[name], _as_typed(name, value))
    return cls(**kwargs)


def _as_typed(name: str, value):
    """A setting whose flag takes words and numbers alike reads the same from TOML: `concept_directions = 24.0` or
    "0.5" is what --concept-directions 24.0 or 0.5 is (anything else is left for validate() to refuse by name)."""
    if name == "concept_directions" and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        parsed = parse_setting(str(value))
        return value if parsed is None else parsed
    return value
