"""An adapter's DUO facts from its safetensors header alone: cheap enough for a widget change in the browser."""
from __future__ import annotations

import json
from pathlib import Path

# The facts the nodes show, in display order.
SHOWN = ("concept", "method", "beta", "lambda", "steps", "pairs", "base_model", "family")


def read_facts(path: str | Path) -> dict:
    """{"is_duo", "facts", "metadata"}: duo.* values JSON-decoded; no tensor is read."""
    from ..trainer.export import decode_duo, read_metadata

    if Path(path).suffix.lower() != ".safetensors":  # a .pt/.ckpt LoRA ComfyUI lists: no header to read facts from
        return {"is_duo": False, "facts": {}, "metadata": {}}
    metadata = read_metadata(path)
    duo = decode_duo(metadata)
    return {"is_duo": bool(duo), "facts": duo,
            "metadata": {k: v for k, v in metadata.items() if not k.startswith("duo.")}}


def base_model_matches(facts: dict, checkpoint_name: str | None) -> bool | None:
    """Whether the adapter was trained on this checkpoint (by file stem, as the trainer records it); None: unknown."""
    base = facts.get("base_model")
    if not base or not checkpoint_name:
        return None
    return Path(checkpoint_name).stem == str(base)


FAMILY_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "sd3": "SD3", "flux": "Flux"}


def _shown(key: str, value) -> str:
    if key == "family" and isinstance(value, str):
        return FAMILY_LABELS.get(value, value)
    return value if isinstance(value, str) else json.dumps(value)


def summary(name: str, info: dict, checkpoint_name: str | None = None) -> str:
    """One line per fact, as DUO Load Adapter's duo_info output and the nodes' text show it."""
    if not info["is_duo"]:
        return f"{name}: not a DUO adapter (no duo.* metadata)"
    facts = info["facts"]
    lines = [name] + [f"{k}: {_shown(k, facts[k])}" for k in SHOWN if k in facts]
    match = base_model_matches(facts, checkpoint_name)
    if match is not None:
        lines.append(f"matches {checkpoint_name}: {'yes' if match else 'no (trained on ' + str(facts['base_model']) + ')'}")
    return "\n".join(lines)
