"""Which diffusers folder's configs fit a single-file checkpoint: the same family, and the same variant where a
family has several (SD3 Medium / SD3.5 Medium / SD3.5 Large; Flux [dev] / [schnell]), whose configs differ in shape."""
from __future__ import annotations

import re
from pathlib import Path

from .errors import UserError
from .models import checkpoint_keys, family_from_folder, flux_variant_from_folder, flux_variant_from_keys, json_object

_SD3_BLOCK = re.compile(r"^(?:model\.diffusion_model\.joint_blocks|transformer_blocks)\.(\d+)\.")


def model_variant(path: Path, family: str) -> str | None:
    """The variant of a file or diffusers folder of `family`, in one spelling for both; None where a family has one."""
    if family == "flux":
        return flux_variant_from_folder(path) if path.is_dir() else flux_variant_from_keys(checkpoint_keys(path))
    if family != "sd3":
        return None
    if path.is_dir():
        config = json_object(path / "transformer" / "config.json")
        layers, dual = config.get("num_layers"), bool(config.get("dual_attention_layers"))
    else:
        blocks = [(int(m[1]), k) for k in checkpoint_keys(path) if (m := _SD3_BLOCK.match(k))]
        layers = 1 + max(i for i, _ in blocks) if blocks else None
        dual = any(".attn2." in k for _, k in blocks)  # MMDiT-X (SD3.5 Medium): a second image self-attention
    return f"{layers} blocks{', dual attention' if dual else ''}"


def matching_config_dir(candidates, family: str, checkpoint: Path) -> Path | None:
    """The first candidate folder of the checkpoint's family and variant; else the first of its family (the load
    then says what does not fit)."""
    try:
        want = model_variant(checkpoint, family)
    except (UserError, OSError):
        want = None
    same_family = []
    for folder in candidates:
        try:
            if family_from_folder(folder) == family:
                same_family.append(folder)
                if want is None or model_variant(folder, family) == want:
                    return folder
        except (UserError, ValueError, OSError):
            continue
    return same_family[0] if same_family else None
