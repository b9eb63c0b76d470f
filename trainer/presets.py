"""Unlearning presets, read from presets/presets.toml (data, not code)."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
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


# in a twin's negative prompt, the pair's unsafe prompt: the paper's negative is that prompt alone
UNSAFE_PROMPT = "{unsafe}"


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
    twin_negative: str = UNSAFE_PROMPT  # the twins' negative prompt ({unsafe}: the pair's unsafe prompt, the paper's)
    retain_prompts: tuple[str, ...] = ()  # the retain set (retain_set.py); none: the paper's DUO
    num_retain: int = 0
    lam_retain: float = 0.0
    t_max: int = 750  # the pairs' timesteps are drawn in [0, t_max)
    retain_t_min: int | None = None  # the retain term's band, [retain_t_min, 1000); None: the pairs'
    concept_directions: int | float | str = 0  # >0: the adapter reads only the concept's directions per layer
    close_concepts: tuple[str, ...] = ()  # words of the retain prompts that name close concepts, weighed close_weight
    close_weight: float = 0.0
    stop_every: int = 0  # >0: `steps` is the most; training stops once `detector` finds the concept gone
    stop_erased: float = 0.85
    shared_t: bool = False  # x⁺ and x⁻ of a pair at one timestep (official DUO: each its own)
    on_policy_pairs: bool = False  # the erasure check's images still showing the concept become pairs
    target_modules: tuple[str, ...] = ()  # the LoRA's layers (none: the family's default); DUO only
    condition: str = "empty"  # the pairs' prompt in training (the paper's: empty); DUO only
    families: dict = field(default_factory=dict)  # family → the fields that differ on it ([<name>.families.<f>])

    def concepts_named(self, name: str | None) -> list[Concept]:
        """The preset's concepts, or the one called `name`; a name it does not have is refused with the ones it has."""
        found = [c for c in self.concepts if not name or c.name == name]
        if name and not found and self.concepts:
            raise UserError(f"preset {self.name} has no concept {name!r}; "
                            f"it has {', '.join(c.name for c in self.concepts)}")
        return found

    def for_family(self, family: str | None) -> "Preset":
        """The recipe on one model family: the preset's shared fields, with that family's table over them."""
        overrides = self.families.get(family or "")
        return replace(self, **overrides) if overrides else self


# the recipe's settings, not its prompts or the concept itself
_PER_FAMILY = {"num_pairs", "strength", "beta", "kappa", "lr", "lam", "steps", "sample_steps", "guidance",
               "edit_region", "twin_negative", "num_retain", "lam_retain", "t_max", "retain_t_min", "stop_every",
               "shared_t", "concept_directions", "close_weight", "stop_erased", "on_policy_pairs", "target_modules",
               "condition"}


def _family_tables(name: str, tables: dict) -> dict:
    from .families import trainable_families  # the registry is the one list of family names

    for family, table in tables.items():
        if family not in trainable_families():
            raise UserError(f"preset {name}: unknown family table {family!r} "
                            f"(families: {', '.join(trainable_families())})")
        wrong = sorted(set(table) - _PER_FAMILY)
        if wrong:
            raise UserError(f"preset {name}, family {family}: {', '.join(wrong)} cannot differ per family "
                            f"(these can: {', '.join(sorted(_PER_FAMILY))})")
    return {family: {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}
            for family, table in tables.items()}


def load_presets(path: Path = PRESETS_FILE) -> dict[str, Preset]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    presets = {}
    for name, table in data.items():
        concepts = [Concept(c, tuple(v["unsafe_prompts"]), tuple(v["safe_prompts"]))
                    for c, v in table.get("concepts", {}).items()]
        values = {k: v for k, v in table.items() if k != "concepts"}
        for key in ("unrelated_prompts", "attack_prompts", "retain_prompts", "close_concepts", "target_modules"):
            values[key] = tuple(values.get(key, ()))
        values["families"] = _family_tables(name, values.get("families", {}))
        presets[name] = Preset(name=name, concepts=concepts, **values)
    return presets


def get_preset(name: str) -> Preset:
    presets = load_presets()
    if name not in presets:
        raise UserError(f"no preset named {name!r}; presets: {', '.join(presets)}")
    return presets[name]
