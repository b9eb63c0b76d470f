"""Unlearning presets, read from presets/presets.toml (data, not code)."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESETS_FILE = Path(__file__).resolve().parent / "presets" / "presets.toml"


@dataclass
class Concept:
    name: str
    unsafe_prompts: tuple[str, ...]
    safe_prompts: tuple[str, ...]


@dataclass
class Preset:
    name: str
    description: str
    detector: str
    num_pairs: int
    strength: float
    beta: float
    concepts: list[Concept] = field(default_factory=list)
    unrelated_prompts: tuple[str, ...] = ()
    attack_prompts: tuple[str, ...] = ()  # paraphrases / synonyms for `duo-unlearn eval`'s prompt attack
    model: str | None = None
    sample_steps: int = 50  # the official pair pipeline (diffusers default steps)
    guidance: float = 7.5
    steps: int | None = None  # training; None: the trainer's default (1000)
    lr: float | None = None  # None: 3e-4 * 100 / beta
    lam: float | None = None  # None: 1e6 * beta / 100
    kappa: float | None = None  # set: β = κ / the pairs' full-swap margin (reward_scale.py) instead of `beta`
    edit_region: str = "image"  # "concept": twins change only the detector's region
    retain_prompts: tuple[str, ...] = ()  # the retain set (retain_set.py); none: the paper's DUO
    num_retain: int = 0
    lam_retain: float = 0.0


def load_presets(path: Path = PRESETS_FILE) -> dict[str, Preset]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    presets = {}
    for name, table in data.items():
        concepts = [Concept(c, tuple(v["unsafe_prompts"]), tuple(v["safe_prompts"]))
                    for c, v in table.get("concepts", {}).items()]
        fields = {k: v for k, v in table.items() if k != "concepts"}
        fields["unrelated_prompts"] = tuple(fields.get("unrelated_prompts", ()))
        fields["attack_prompts"] = tuple(fields.get("attack_prompts", ()))
        fields["retain_prompts"] = tuple(fields.get("retain_prompts", ()))
        presets[name] = Preset(name=name, concepts=concepts, **fields)
    return presets


def get_preset(name: str) -> Preset:
    presets = load_presets()
    if name not in presets:
        raise UserError(f"no preset named {name!r}; presets: {', '.join(presets)}")
    return presets[name]
