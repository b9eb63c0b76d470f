"""`duo-unlearn unlearn`: preset -> pairs -> DUO training -> adapter(s) -> base-vs-unlearned preview."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .concept_directions import weighed_close_rows
from .config import LoraConfig, TrainConfig
from .detectors import no_detector
from .errors import UserError
from .export import check_writable
from .families import get_family
from .pairs import PairConfig, PairStats, check_pair_folder, generate_pairs
from .presets import UNSAFE_PROMPT, Concept, Preset, get_preset
from .previews import refuse_existing_preview
from .progress import ProgressCallback, ProgressEvent, report
from .testbed import TESTBED_NAME


@dataclass
class UnlearnConfig:
    """What a user chooses; None means "the preset's value"."""

    preset: str = "testbed-red"
    out: str = "duo_adapter.safetensors"
    model: str | None = None
    config_dir: str | None = None
    drop_t5: bool = False  # SD3: load without T5 (diffusers' text_encoder_3=None), for small cards
    pairs_dir: str | None = None  # default: <out stem>_pairs next to the adapter
    concept: str | None = None  # custom preset: its name; multi-concept presets: train only this one
    unsafe_prompts: tuple[str, ...] = ()
    safe_prompts: tuple[str, ...] = ()
    num_pairs: int | None = None
    strength: float | None = None
    detector: str | None = None
    max_retries: int = -1  # as pairs': -1 retries each image until the detector agrees (the official script)
    method: str = "duo"  # "esd": the ESD baseline, on the same pairs
    beta: float | None = None
    kappa: float | None = None  # β from the pairs: κ / full-swap margin (None: the preset's, unless --beta)
    steps: int | None = None  # None: the preset's, else 1000
    lr: float | None = None
    lr_scheduler: str = "constant"  # the official recipe's; lr_schedule.SCHEDULES
    lr_warmup_steps: int = 0
    lr_cycles: int = 1
    lam: float | None = None
    edit_region: str | None = None  # "image" or "concept" (None: the preset's)
    twin_negative: str | None = None  # the twins' negative prompt, {unsafe} the pair's unsafe prompt (None: preset's)
    retain_prompts: tuple[str, ...] = ()  # prompts whose images must stay (default: the preset's)
    num_retain: int | None = None  # retain-set images (None: the preset's; 0: none)
    lam_retain: float | None = None  # weight of the retain-set term (None: the preset's; 0: off)
    t_max: int | None = None  # the pairs' timesteps in [0, t_max) (None: the preset's)
    retain_t_min: int | None = None  # the retain term's timesteps in [retain_t_min, 1000) (None: the preset's)
    concept_directions: int | float | str | None = None  # the concept's input directions (None: preset's; 0: off)
    close_concepts: tuple[str, ...] = ()  # retain-prompt words of close concepts (default: the preset's)
    close_weight: float | None = None  # their extra weight among what is kept (None: the preset's)
    stop_every: int | None = None  # check erasure every N steps (None: the preset's; 0: train all steps)
    stop_erased: float | None = None  # erased fraction of the check images that stops training (None: preset's)
    shared_t: bool | None = None  # x⁺ and x⁻ of a pair at one timestep (None: the preset's)
    on_policy_pairs: bool | None = None  # check images still showing the concept become pairs (None: the preset's)
    condition: str | None = None  # None: the preset's ("empty", the paper's); "unsafe": both on the unsafe prompt
    rank: int = 32
    target_modules: tuple[str, ...] = ()  # LoRA on these module name suffixes (empty: the preset's, else the family's)
    batch_pairs: int = 4
    seed: int = 0
    preview: bool = True
    device: str = "auto"
    mixed_precision: str = "auto"
    gradient_checkpointing: str = "auto"
    resolution: int | None = None  # pairs and training at this size; None: the model's native size
    micro_batch_pairs: int | None = None
    overwrite: bool = False  # replace existing adapters (and their previews) of the same names


@dataclass
class ConceptPlan:
    concept: Concept
    pairs: PairConfig
    train: TrainConfig


@dataclass
class UnlearnResult:
    concept: str
    adapter: Path
    pairs: PairStats
    preview: Path | None
    seconds: float


def _given(value, fallback):
    return value if value is not None else fallback


def _family_of(model: str) -> str | None:
    """From the model's keys, no weights read; None when it cannot be found (loading it reports that)."""
    from .models import detect_family, resolve_model_path

    try:
        return detect_family(resolve_model_path(model))
    except UserError:
        return None


def plan(cfg: UnlearnConfig) -> tuple[Preset, list[ConceptPlan]]:
    preset = get_preset(cfg.preset)
    if preset.families:  # the recipe may differ per family: decide it before anything is made
        preset = preset.for_family(_family_of(cfg.model or preset.model or TESTBED_NAME))
    concepts = list(preset.concepts)
    if cfg.unsafe_prompts or cfg.safe_prompts or not concepts:
        if not cfg.unsafe_prompts:
            raise UserError("no unsafe prompts: give --unsafe-prompt (one or more) for the custom preset")
        if not cfg.safe_prompts:
            raise UserError("no safe prompts: give --safe-prompt (one or more) for the custom preset")
        concepts = [Concept(cfg.concept or "custom", tuple(cfg.unsafe_prompts), tuple(cfg.safe_prompts))]
    elif cfg.concept:
        concepts = preset.concepts_named(cfg.concept)
    out = Path(cfg.out)
    if out.suffix != ".safetensors":
        raise UserError(f"--out must be a .safetensors file name, got {cfg.out}")
    if cfg.method == "esd":  # the baseline trains on the unsafe images alone: a setting for DUO's extras is not used
        extras = {"--num-retain": cfg.num_retain, "--lam-retain": cfg.lam_retain, "--retain-prompt": cfg.retain_prompts,
                  "--concept-directions": cfg.concept_directions, "--close-concepts": cfg.close_concepts,
                  "--close-weight": cfg.close_weight}
        given = [flag for flag, value in extras.items() if value not in (None, (), 0, 0.0)]
        if given:
            raise UserError(f"--method esd has no retain set or concept directions; leave out {', '.join(given)}")
    model = cfg.model or preset.model or TESTBED_NAME
    plans = []
    for concept in concepts:
        adapter = out if len(concepts) == 1 else out.with_name(f"{out.stem}_{concept.name}.safetensors")
        pairs_root = Path(cfg.pairs_dir) if cfg.pairs_dir else out.with_name(f"{out.stem}_pairs")
        pairs_dir = pairs_root if len(concepts) == 1 else pairs_root / concept.name
        if pairs_dir.resolve() == adapter.resolve():  # the pairs would take the adapter's name as their folder
            raise UserError(f"--pairs-dir and --out both name {adapter}: the pairs need a folder of their own")
        pair_cfg = PairConfig(
            out=str(pairs_dir), model=model, config_dir=cfg.config_dir, unsafe_prompts=concept.unsafe_prompts,
            safe_prompts=concept.safe_prompts, num_pairs=cfg.num_pairs if cfg.num_pairs is not None else preset.num_pairs,
            strength=cfg.strength if cfg.strength is not None else preset.strength,
            guidance=preset.guidance, sample_steps=preset.sample_steps,
            detector=cfg.detector or preset.detector, max_retries=cfg.max_retries, seed=cfg.seed,
            resolution=cfg.resolution, device=cfg.device, mixed_precision=cfg.mixed_precision,
            edit_region=cfg.edit_region or preset.edit_region,
            twin_negative=_given(cfg.twin_negative, preset.twin_negative),
            retain_prompts=tuple(cfg.retain_prompts) or preset.retain_prompts,
            num_retain=_given(cfg.num_retain, preset.num_retain) if cfg.method == "duo" else 0)
        lam_retain = _given(cfg.lam_retain, preset.lam_retain if pair_cfg.num_retain else 0.0)
        if lam_retain and not pair_cfg.num_retain and cfg.method == "duo":
            raise UserError("--lam-retain needs a retain set: give --retain-prompt and --num-retain")
        directions = _given(cfg.concept_directions, preset.concept_directions if pair_cfg.num_retain else 0)
        if directions and not pair_cfg.num_retain and cfg.method == "duo":
            raise UserError("--concept-directions needs a retain set: give --retain-prompt and --num-retain")
        close = (tuple(cfg.close_concepts) or preset.close_concepts) if directions else ()
        close_weight = _given(cfg.close_weight, preset.close_weight) if directions else 0.0
        weighed_close_rows(pair_cfg.retain_prompts, close, close_weight)  # said before pairs are made
        previews = tuple(dict.fromkeys(concept.unsafe_prompts))[:3] + preset.unrelated_prompts[:3]
        # a preset's lr/lambda belong to its beta, and to DUO (ESD keeps its own lr default)
        same_beta = cfg.method == "duo" and (cfg.beta is None or cfg.beta == preset.beta)
        train_cfg = TrainConfig(
            pairs=str(pairs_dir), model=model, out=str(adapter), config_dir=cfg.config_dir, concept=concept.name,
            method=cfg.method, condition=_given(cfg.condition, preset.condition if cfg.method == "duo" else "empty"),
            beta=cfg.beta if cfg.beta is not None else preset.beta,
            kappa=cfg.kappa if cfg.kappa is not None else (preset.kappa if cfg.beta is None else None),
            lr=_given(cfg.lr, preset.lr if same_beta else None), lam=_given(cfg.lam, preset.lam if same_beta else None),
            steps=_given(cfg.steps, preset.steps or 1000), batch_pairs=cfg.batch_pairs,
            lr_scheduler=cfg.lr_scheduler, lr_warmup_steps=cfg.lr_warmup_steps, lr_cycles=cfg.lr_cycles,
            lora=LoraConfig(rank=cfg.rank, alpha=float(cfg.rank), target_modules=tuple(cfg.target_modules) or (
                preset.target_modules if cfg.method == "duo" else ())),
            seed=cfg.seed, preview_prompts=previews if cfg.preview else (), preview_steps=preset.sample_steps,
            preview_guidance=preset.guidance, device=cfg.device, overwrite=cfg.overwrite,
            mixed_precision=cfg.mixed_precision, gradient_checkpointing=cfg.gradient_checkpointing,
            resolution=cfg.resolution, micro_batch_pairs=cfg.micro_batch_pairs,
            lam_retain=lam_retain if cfg.method == "duo" else 0.0, t_max=_given(cfg.t_max, preset.t_max),
            **_retain_band(_given(cfg.retain_t_min, preset.retain_t_min)), shared_t=_given(cfg.shared_t, preset.shared_t),
            concept_directions=directions if cfg.method == "duo" else 0,
            close_concepts=close, close_weight=close_weight,
            **_stop_rule(cfg, preset, pair_cfg.detector))
        pair_cfg.validate()
        train_cfg.validate()
        plans.append(ConceptPlan(concept, pair_cfg, train_cfg))
    return preset, plans


def _retain_band(lo: int | None) -> dict:
    """A preset's retain band runs from its lower edge to the last timestep: the early sampling steps, where the
    sampler lays out the image and its background."""
    return {} if lo is None else {"retain_t_min": lo, "retain_t_max": 1000}


def _stop_rule(cfg: UnlearnConfig, preset: Preset, detector: str) -> dict:
    """The erasure check (erasure_stop) reads samples with the detector that gated the pairs; with on-policy pairs
    it also adds to them (the preset's only where the check runs and the method is DUO)."""
    every = _given(cfg.stop_every, preset.stop_every)
    if every and no_detector(detector):
        if cfg.stop_every:  # asked for by name: say why it cannot run
            raise UserError("--stop-every needs a detector for the concept (--detector nudenet, colour:<name>)")
        every = 0  # the preset's rule, on a run whose detector was turned off: train all steps
    on_policy = cfg.on_policy_pairs  # asked for by name and impossible: TrainConfig.validate says why
    if on_policy is None:
        on_policy = preset.on_policy_pairs and bool(every) and cfg.method == "duo"
    return {"stop_every": every, "stop_detector": detector if every else "none",
            "stop_erased": _given(cfg.stop_erased, preset.stop_erased), "on_policy_pairs": on_policy}


def unlearn(cfg: UnlearnConfig, progress: ProgressCallback | None = None, model=None) -> list[UnlearnResult]:
    """Run every concept of the plan on one loaded model; each adapter is trained from the base model."""
    from .lora import remove_lora
    from .models import load_model, model_options, refuse_inside_model
    from .train import check_lora_setup, train

    preset, plans = plan(cfg)
    for p in plans:  # every name checked before the model loads and the first pair is made
        check_writable(p.train.out, overwrite=cfg.overwrite)
        if p.train.preview_prompts:
            refuse_existing_preview(p.train.out, cfg.overwrite)
        check_pair_folder(p.pairs.out)
    model = model or load_model(plans[0].pairs.model, cfg.config_dir, options=model_options(cfg.drop_t5))
    family = get_family(model.family)
    for p in plans:
        refuse_inside_model(p.train.out, model.source)
        refuse_inside_model(p.pairs.out, model.source)
        # a mistyped --target-modules is said before minutes of pair making, not after
        check_lora_setup(family.denoiser(model.pipe), p.train, family)
    results = []
    for k, p in enumerate(plans):
        started = time.time()
        stage = f"{p.concept.name} ({k + 1}/{len(plans)})"
        report(progress, ProgressEvent("pairs", 0, p.pairs.num_pairs, f"{stage}: making pairs in {p.pairs.out}"))
        stats = generate_pairs(p.pairs, progress, model=model)
        if stats.made + stats.kept_existing == 0:
            raise UserError(f"no pair survived the {p.pairs.detector} detector for {p.concept.name} "
                            f"({stats.skipped} skipped: {stats.skipped_reasons}); try more retries or other prompts")
        facts = {"preset": preset.name, "strength": p.pairs.strength, "detector": p.pairs.detector,
                 "edit_region": p.pairs.edit_region}
        if p.pairs.twin_negative != UNSAFE_PROMPT:  # adapters from before it existed read as they were
            facts["twin_negative"] = p.pairs.twin_negative
        try:
            result = train(p.train, progress, model=model, facts=facts)
        finally:
            remove_lora(family.denoiser(model.pipe))  # the next concept starts from the base
        results.append(UnlearnResult(p.concept.name, result.adapter, stats,
                                     result.previews[0] if result.previews else None, time.time() - started))
    return results


def stacking_hint(results: list[UnlearnResult]) -> str:
    names = [r.adapter.stem for r in results]
    return ("A1111/Forge prompt: " + " ".join(f"<lora:{n}:1>" for n in names) +
            " | ComfyUI: chain one LoraLoader (or DUO Load Adapter) per file | diffusers: "
            "pipe.load_lora_weights(file, adapter_name=name) for each, then pipe.set_adapters(names, weights)")
