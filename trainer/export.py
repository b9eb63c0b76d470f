"""The adapter file users load: kohya-format LoRA safetensors with ss_*, modelspec.* and duo.* metadata."""
from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from .errors import UserError

KOHYA_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")


def peft_to_kohya(peft_state: dict, alpha: float, prefix: str = "unet") -> dict:
    """Peft's `…lora_A.weight` names to kohya's `lora_unet_…lora_down.weight`, with an alpha per module.

    diffusers' converter does the renaming; it writes alpha = rank, so the configured alpha is set afterwards
    (kohya scales by alpha / rank, as peft scales by lora_alpha / r).
    """
    import torch
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

    prefixed = {f"{prefix}.{k}": v for k, v in peft_state.items()}
    kohya = convert_state_dict_to_kohya(prefixed)
    out = {}
    for key, value in kohya.items():
        key = key.replace("lora_te1_", "lora_te_")  # SD1/2 have one text encoder: kohya calls it lora_te
        if key.endswith(".alpha"):
            value = torch.tensor(float(alpha))
        out[key] = value.detach().to("cpu").contiguous()
    bad = [k for k in out if not (k.startswith(("lora_unet_", "lora_te_")) and k.endswith(KOHYA_SUFFIXES))]
    if bad:
        raise ValueError(f"conversion left non-kohya keys: {bad[:3]}")
    return out


def peft_to_diffusers(peft_state: dict, alpha: float, prefix: str = "transformer") -> dict:
    """Peft names under the pipeline's component (`transformer.…lora_A.weight` / `lora_B.weight`), alpha baked in.

    The format diffusers' load_lora_weights and ComfyUI (its `transformer.*` key map) both read for SD3. Neither
    reads an alpha from such a file (diffusers even rejects keys without 'lora' in them), so the alpha / rank scale
    is multiplied into lora_B: both hosts then apply exactly what training applied.
    """
    out = {}
    for key, value in peft_state.items():
        if not key.endswith((".lora_A.weight", ".lora_B.weight")):
            raise ValueError(f"unexpected LoRA tensor {key!r} (only lora_A/lora_B weights are exported)")
        value = value.detach().to("cpu")
        if key.endswith(".lora_B.weight"):
            rank = peft_state[key[: -len("lora_B.weight")] + "lora_A.weight"].shape[0]
            value = value * (float(alpha) / rank)
        out[f"{prefix}.{key}"] = value.contiguous()
    return out


def adapter_metadata(*, output_name: str, family: str, rank: int, alpha: float, target_modules, duo: dict) -> dict:
    """ss_* minimum set, modelspec.* and duo.*; safetensors metadata values must be strings."""
    from .models import ARCHITECTURES

    architecture, base_version = ARCHITECTURES[family]
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(float(alpha)),
        "ss_base_model_version": base_version,
        "ss_v2": str(family == "sd2"),
        "ss_network_args": json.dumps({"target_modules": list(target_modules)}),
        "ss_output_name": output_name,
        "ss_training_comment": "DUO concept unlearning (duo-unlearn)",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": architecture,
        "modelspec.implementation": "https://github.com/huggingface/diffusers",
        "modelspec.title": output_name,
        "modelspec.date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
        "modelspec.description": f"DUO unlearning of '{duo.get('concept', '')}'",
    }
    for key, value in duo.items():
        meta[f"duo.{key}"] = value if isinstance(value, str) else json.dumps(value)
    return meta


def atomic_save(tensors: dict, path: Path, metadata: dict) -> None:
    """Write next to the target and rename over it, so the file is complete or absent."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and path.is_dir():
        raise UserError(f"{path} is a folder, not a file name")
    fd, tmp = tempfile.mkstemp(prefix="." + path.name, suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(path: str | Path) -> Path:
    """Fail before hours of training, not after: the folder must exist (or be creatable) and accept files."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"output {path} is a folder; give a file name ending in .safetensors")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UserError(f"cannot write to {path.parent}: {e.strerror or e}") from None
    return path


def read_adapter(path: str | Path) -> tuple[dict, dict]:
    """(tensors, metadata) of an adapter file, with a clear error for anything that is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"adapter not found: {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path} is not a safetensors file: {e}") from None
    return tensors, metadata


def describe_adapter(path: str | Path) -> dict:
    """What `duo-unlearn info` shows: modules, rank, and the metadata with duo.* values decoded."""
    tensors, metadata = read_adapter(path)
    modules = sorted({k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in tensors})
    duo = {}
    for key, value in metadata.items():
        if key.startswith("duo."):
            try:
                duo[key[4:]] = json.loads(value)
            except json.JSONDecodeError:
                duo[key[4:]] = value
    return {
        "file": str(path),
        "modules": len(modules),
        "tensors": len(tensors),
        "kohya_names_only": all(k.startswith(("lora_unet_", "lora_te_")) and k.endswith(KOHYA_SUFFIXES)
                                for k in tensors),
        "is_duo": bool(duo),
        "duo": duo,
        "metadata": {k: v for k, v in metadata.items() if not k.startswith("duo.")},
    }
