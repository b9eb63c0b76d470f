"""Dataclass fields <-> argparse flags <-> TOML keys: one table of help texts, one merge rule (CLI > TOML > default)."""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import typing
from pathlib import Path
from typing import Any

from .erasure_stop import CHECK_IMAGES
from .errors import UserError
from .lr_schedule import SCHEDULES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

HELP = {
    "pairs": "pair dataset folder (unsafe/, safe/, pairs.jsonl)",
    "model": "base model: diffusers folder, .safetensors/.ckpt checkpoint, or a bundled test bed by name "
             "(testbed: SD 1.x, testbed-xl: SDXL, testbed-sd3: SD3)",
    "out": "adapter file to write (.safetensors, kohya LoRA format)",
    "config_dir": "diffusers config folder for a single-file checkpoint when its configs cannot be downloaded",
    "drop_t5": "SD3: load the model without its T5 encoder (its embeddings become zeros, as diffusers does with "
               "text_encoder_3=None) to fit a small card; recorded as duo.t5_encoder. A single file without T5 "
               "weights is loaded this way by itself",
    "concept": "name of the concept being unlearned (recorded in the adapter metadata)",
    "method": "training objective: duo (default) or esd (the ESD baseline, Gandikota et al. 2023)",
    "esd_eta": "ESD only: negative guidance scale eta of the target eps_ref(x,t) - eta (eps_ref(x,c,t) - eps_ref(x,t))",
    "beta": "DPO temperature beta (official: 500 nudity, 1000 violence)",
    "kappa": "set beta from the pairs instead: beta = kappa / full-swap margin (5: the preference stops about where "
             "the model draws the twin; see benchmarks/RESULTS.md)",
    "lr": "learning rate (default 3e-4 * 100 / beta; esd: 1e-4)",
    "lr_scheduler": f"learning-rate schedule over --steps: {', '.join(SCHEDULES)}",
    "lr_warmup_steps": "steps the learning rate rises from 0 (needs a schedule with a warm-up, not constant)",
    "lr_cycles": "cosine_with_restarts: the number of cosine cycles over --steps",
    "lam": "output-preservation weight lambda (default 1e6 * beta / 100; 0 disables it)",
    "steps": "optimisation steps",
    "batch_pairs": "pairs per step",
    "rank": "LoRA rank",
    "alpha": "LoRA alpha (scale = alpha / rank)",
    "target_modules": "comma-separated module suffixes to adapt (none: the family's self-attention, "
                      "attn1.to_q,k,v,out on SD 1.x/2.x/SDXL, attention to_q,k,v,out on SD3; unlearn: the preset's "
                      "first, where it names them)",
    "t_min": "lowest timestep drawn for the pairs",
    "t_max": "timesteps are drawn in [t_min, t_max)",
    "retain_t_min": "the retain term's timesteps are drawn from here (train: up to --retain-t-max; unlearn: up to "
                    "1000, the sampler's early steps; default: the pairs' range)",
    "retain_t_max": "the retain term's timesteps are drawn below this (default: the pairs' range)",
    "shared_t": "draw one timestep per pair for both its images (Diffusion-DPO) instead of one per image (the "
                "official DUO code)",
    "weight_decay": "AdamW weight decay",
    "grad_clip": "gradient norm clip (0: off)",
    "condition": "'empty' (official), 'prompt' (each image on its own prompt) or 'unsafe' (both images of a pair on the "
                 "unsafe prompt); unlearn: the preset's when not given (every bundled preset's: empty)",
    "mixed_precision": "no, fp16 or bf16",
    "gradient_checkpointing": "trade compute for memory (consumer GPUs)",
    "use_8bit_adam": "8-bit AdamW from bitsandbytes (must be installed)",
    "checkpoint_every": "save a resumable checkpoint every N steps (0: never)",
    "checkpoint_dir": "where checkpoints go (default: <out>.checkpoints)",
    "resume": "continue from the newest checkpoint in the checkpoint folder",
    "preview_every": "save a base-vs-unlearned preview every N steps (needs preview prompts)",
    "preview_prompts": "prompts for previews ('|'-separated on the command line)",
    "preview_seed": "seed of the preview images",
    "preview_steps": "sampling steps of the preview images",
    "preview_guidance": "guidance scale of the preview images",
    "seed": "random seed (same seed and config on CPU: same adapter)",
    "stop_every": "every N steps, sample the pairs' unsafe prompts (as the previews: --preview-steps, "
                  "--preview-guidance) and stop once the concept is gone from them (--steps becomes the most; 0: off)",
    "stop_detector": "the detector that reads those samples: nudenet, nudenet:<min score>, colour:<name>",
    "stop_erased": f"fraction of the {CHECK_IMAGES} check images without the concept that stops training",
    "on_policy_pairs": "at every erasure check, the check images that still show the concept become new pairs, each "
                       "with a base-model SDEdit twin (needs --stop-every)",
    "device": "auto (accelerate decides), cpu, or cuda",
    "overwrite": "replace an existing adapter of the same name (otherwise refused)",
    "resolution": "train (and make pairs) at this image size; default: the model's native size",
    "micro_batch_pairs": "pairs per forward pass; gradients add up to --batch-pairs (same loss, less memory)",
}
_LIST_SEPARATOR = {"target_modules": ",", "preview_prompts": "|"}
_REPEATED = {"unsafe_prompts": "--unsafe-prompt", "safe_prompts": "--safe-prompt", "adapters": "--adapter",
             "retain_prompts": "--retain-prompt"}
HELP.update({
    "unsafe_prompts": "a prompt that shows the concept (repeat the flag for several)",
    "safe_prompts": "the safe counterpart: one for all, or one per unsafe prompt (repeat the flag)",
    "num_pairs": "number of (unsafe, safe) pairs",
    "strength": "SDEdit strength of the safe twins, in (0, 1]",
    "guidance": "classifier-free guidance scale for pair images",
    "sample_steps": "sampling steps for pair images",
    "detector": "gate pairs with: none, nudenet (any finding, as the official code), nudenet:<min score>, "
                "or colour:<name> (test bed)",
    "max_retries": "-1 (default, as the official script): retry each image until the detector agrees; "
                   "N: at most N extra attempts, then the pair is skipped",
    "batch_size": "images generated per batch",
    "preset": "preset name (nudity, violence, testbed-red, custom)",
    "pairs_dir": "where the pair dataset goes (default: <out stem>_pairs next to the adapter)",
    "preview": "save the base-vs-unlearned preview grid",
    "edit_region": "safe twins: 'image' (SDEdit repaints everything, the paper's) or 'concept' (only the "
                   "detector's region changes; the rest is the unsafe image's)",
    "twin_negative": "the safe twins' negative prompt; {unsafe} stands for the pair's unsafe prompt (default "
                     "{unsafe}, the paper's: the whole prompt, which also pushes the twin off what else it names)",
    "retain_prompts": "a prompt whose images must stay as they are (the retain set; repeat the flag)",
    "num_retain": "retain-set images made with the pairs (base-model images of the retain prompts; 0: none)",
    "lam_retain": "weight of output preservation on the retain set's noised images (0: off, the paper's DUO)",
    "concept_directions": "N > 0: each LoRA layer reads only the N input directions where the concept's features "
                          "stand out most against the retain set's; 0 < SHARE < 1: that share of each layer's "
                          "inputs; auto: those where they stand out more than the layer's average (needs a retain "
                          "set; 0: off, the paper's DUO)",
    "close_concepts": "words that mark retain prompts of close concepts (orange beside red), comma-separated",
    "close_weight": "how many more times those retain images count among what the directions must leave alone",
})


class OneLineParser(argparse.ArgumentParser):
    """A bad flag gets one line, as every other bad input does (argparse would print the usage above it); --help
    still shows the usage."""

    def __init__(self, *args, **kwargs):
        # argparse would take "--config" for "--config-dir" on a command without --config, and go on without the file
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        # argparse before 3.13 reads "-1e-3" (and "-inf") as a flag, so "--vae-lr -1e-3" got "expected one
        # argument" instead of the range check's message
        self._negative_number_matcher = re.compile(r"^-(?:(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|inf|nan)$",
                                                   re.IGNORECASE)

    def error(self, message: str):
        self.exit(2, f"duo-unlearn: error: {message} (see {self.prog} --help)\n")


def directions_setting(text: str) -> int | float | str:
    """--concept-directions: a whole number, a share of each layer's width (0.5), or auto; the range is the
    config's check."""
    from .concept_directions import AUTO, parse_setting

    setting = parse_setting(text)
    if setting is None:
        raise argparse.ArgumentTypeError(f"expected a whole number, a share such as 0.5, or {AUTO}, got {text!r}")
    return setting


_FLAG_TYPES = {"concept_directions": (directions_setting, "N|SHARE|auto")}


def _scalar_type(hint) -> type:
    """int for `int | None`, float for `float`, str otherwise."""
    for kind in (bool, int, float):
        if hint is kind or kind in getattr(hint, "__args__", ()):
            return kind
    return str


def _flat_fields(cls) -> list[tuple[str, Any, str | None, type]]:
    """(name, default, parent, type) per field, nested dataclasses flattened (lora.rank -> rank)."""
    out = []
    inst = cls()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = getattr(inst, f.name)
        if dataclasses.is_dataclass(value):
            out += [(n, d, f.name, t) for n, d, _, t in _flat_fields(type(value))]
        else:
            out.append((f.name, value, None, _scalar_type(hints[f.name])))
    return out


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = (),
                        help_texts: dict[str, str] | None = None) -> None:
    for name, default, _, kind in _flat_fields(cls):
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        text = (help_texts or {}).get(name) or HELP.get(name, name.replace("_", " "))
        if name in _REPEATED:
            parser.add_argument(_REPEATED[name], dest=name, action="append", default=None,
                                metavar="FILE" if name == "adapters" else "PROMPT",
                                help=text)
        elif kind is bool:  # also `bool | None`, where unset means the preset's
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif isinstance(default, tuple):
            parser.add_argument(flag, default=None, help=f"{text} (default: {_LIST_SEPARATOR.get(name, ',').join(default) or 'none'})")
        else:
            kind, metavar = _FLAG_TYPES.get(name, (kind, kind.__name__.upper()))
            parser.add_argument(flag, type=kind, default=None, metavar=metavar,
                                help=f"{text} (default: {default})" if default not in (None, "") else text)


def load_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is a folder, not a config file" if path.is_dir() else
                        f"{path} is not a regular file: give a TOML file" if path.exists() else
                        f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid TOML: {e}") from None


def build_config(cls, args: argparse.Namespace, toml: dict | None = None):
    """Defaults, then the TOML file, then flags given on the command line."""
    from .config import from_mapping

    data = dict(toml or {})
    for name, default, parent, _ in _flat_fields(cls):
        value = getattr(args, name, None)
        if value is None:
            continue
        if isinstance(default, tuple) and isinstance(value, str):
            value = [v.strip() for v in value.split(_LIST_SEPARATOR.get(name, ",")) if v.strip()]
        if parent:
            table = data.setdefault(parent, {})
            if not isinstance(table, dict):  # `lora = "x"` in the file: say so, as without the flag
                raise UserError(f"config: [{parent}] must be a table")
            table[name] = value
        else:
            data[name] = value
    if data.get("kappa") is not None and data.get("beta") is not None:  # κ sets β: one of them would be ignored
        raise UserError("give --beta or --kappa (β = κ / the pairs' full-swap margin), not both")
    try:
        return from_mapping(cls, data)
    except TypeError as e:
        raise UserError(f"bad setting: {e}") from None
