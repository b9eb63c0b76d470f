"""Whether an adapter on disk was trained on the schedule a TrainConfig asks for, read from its duo.* facts.

The ComfyUI node and the efficacy benchmark both skip retraining when an adapter already holds the run; they share
this one rule so that a new schedule setting cannot be checked by one and forgotten by the other.
"""
from __future__ import annotations

from .config import TrainConfig
from .erasure_stop import planned_steps, same_stop_rule

KAPPA_TOLERANCE = 1e-3  # κ is recorded rounded to 4 places
DEFAULT_T_RANGE = [TrainConfig.t_min, TrainConfig.t_max]  # for facts written by hand, which may leave it out


def same_schedule(facts: dict, cfg) -> bool:
    """Same planned steps, erasure check, timestep ranges and draw, learning-rate schedule, conditioning, LoRA layers
    (where the config names them) and preference strength (β as given, or κ when β is derived from the pairs) as
    `cfg`, a TrainConfig."""
    if planned_steps(facts) != cfg.steps or not same_stop_rule(facts, cfg):
        return False
    t_range = list(facts.get("t_range", DEFAULT_T_RANGE))  # every adapter train writes records it
    if t_range != [cfg.t_min, cfg.t_max]:
        return False
    if bool(facts.get("shared_t")) != cfg.shared_t:  # adapters from before `shared_t` drew one t per image
        return False
    # adapters from before learning-rate schedules were trained at a constant rate
    if (facts.get("lr_scheduler", "constant"), facts.get("lr_warmup_steps", 0), facts.get("lr_cycles", 1)) != (
            cfg.lr_scheduler, cfg.lr_warmup_steps, cfg.lr_cycles):
        return False
    if cfg.method != "duo":
        return True
    if facts.get("condition", "empty") != cfg.condition:
        return False
    # adapters from before the targets were recorded were on the family's; an empty config names the family's too
    if cfg.lora.target_modules and list(facts.get("target_modules", ())) != list(cfg.lora.target_modules):
        return False
    # adapters from before the band drew the retain term's t as the pairs'
    if cfg.lam_retain and list(facts.get("retain_t_range", t_range)) != list(cfg.retain_t_range):
        return False
    if _directions(facts.get("concept_directions"), facts.get("close_concepts"), facts.get("close_weight")) != \
            _directions(cfg.concept_directions, cfg.close_concepts, cfg.close_weight):
        return False
    if cfg.kappa is None:
        return facts.get("beta") == cfg.beta
    return abs(float(facts.get("kappa") or 0) - cfg.kappa) <= KAPPA_TOLERANCE


def _directions(n, close, weight) -> tuple:
    """The concept-directions setting as one value (off: 0, whatever close words a config still names)."""
    return (n, list(close or ()), float(weight or 0)) if n else (0,)
