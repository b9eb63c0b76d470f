"""The adapter file users load: kohya-format LoRA safetensors with ss_*, modelspec.* and duo.* metadata."""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from .errors import UserError, refuse_unreadable

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

    Why not kohya names here, as for SD 1.x/SDXL: for the MMDiT families (SD3, Flux) A1111 has no loader, ComfyUI and
    Forge map these diffusers names onto their (fused) weights with 0 modules dropped (benchmarks/check_comfyui_keys.py),
    and diffusers itself (the standalone tab's Compare) reads no kohya `lora_transformer_*` file for SD3. The SD1 rule
    (peft names are silently dropped by A1111/ComfyUI) does not apply to these families.
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


def adapter_metadata(*, output_name: str, family_meta: dict, rank: int, alpha: float, target_modules,
                     duo: dict) -> dict:
    """ss_* minimum set, modelspec.* and duo.*; safetensors metadata values must be strings.
    family_meta: the family's own keys (Family.metadata: ss_base_model_version, ss_v2, modelspec.architecture)."""
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(float(alpha)),
        "ss_network_args": json.dumps({"target_modules": list(target_modules)}),
        "ss_output_name": output_name,
        "ss_training_comment": "DUO concept unlearning (duo-unlearn)",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.implementation": "https://github.com/huggingface/diffusers",
        "modelspec.title": output_name,
        "modelspec.date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
        "modelspec.description": f"DUO unlearning of '{duo.get('concept', '')}'",
    }
    meta.update({k: str(v) for k, v in family_meta.items()})
    # the training facts kohya's trainers record under these names, for the hosts' and model sites' metadata views
    for ss_key, key in (("ss_learning_rate", "lr"), ("ss_unet_lr", "lr"), ("ss_lr_scheduler", "lr_scheduler"),
                        ("ss_lr_warmup_steps", "lr_warmup_steps"), ("ss_steps", "steps"),
                        ("ss_max_train_steps", "max_steps" if "max_steps" in duo else "steps"), ("ss_seed", "seed")):
        if duo.get(key) is not None:
            meta[ss_key] = str(duo[key])
    for key, value in duo.items():
        meta[f"duo.{key}"] = value if isinstance(value, str) else json.dumps(value)
    return meta


def atomic_save(tensors: dict, path: Path, metadata: dict, replace: bool = True) -> None:
    """The adapter file, complete or absent (temp name + rename), readable like any other file; replace=False keeps
    a file that appeared at `path` since the run began."""
    from safetensors.torch import save_file

    from .atomic import write_atomic

    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), replace=replace)


def check_writable(path: str | Path, overwrite: bool = False) -> Path:
    """Fail before hours of training, not after: the name must be new (or overwrite asked for), the folder must
    exist (or be creatable) and accept files, and every name derived from it must fit the file system."""
    from .atomic import check_folder_writable, disk_error

    path = Path(path)
    longest = f".{path.stem}.preview-000000.png.tmp"  # the longest name written beside the adapter
    # the parent is not made yet (a run refused later would leave it behind, empty; saving makes it): the nearest
    # folder that exists is probed and asked for its name limit
    folder = check_folder_writable(path.parent)
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except OSError as e:
        raise disk_error(path, e) from None
    if len(os.fsencode(longest)) > limit:  # before any stat of the name itself, which fails on too long a name
        raise UserError(f"the file name {path.name!r} is too long for this file system (at most "
                        f"{limit - len(longest) + len(path.name)} characters here)")
    if path.is_dir():
        raise UserError(f"output {path} is a folder; give a file name ending in .safetensors")
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists; choose another name or pass --overwrite to replace it")
    return path


MAX_HEADER = 16 * 2**20  # kohya's tag-frequency metadata reaches a few MB; anything far larger is not an adapter


def read_metadata(path: str | Path) -> dict:
    """The safetensors metadata only, without reading a tensor, refusing oversized headers."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is a folder, not an adapter file" if path.is_dir() else f"adapter not found: {path}")
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
        if not 0 < size <= MAX_HEADER:
            raise UserError(f"{path} is not a safetensors file, or its header ({size} bytes) is over the "
                            f"{MAX_HEADER // 2**20} MB an adapter's metadata needs")
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as e:
        refuse_unreadable(path, e)  # neither damage nor absence, whatever safetensors says
        raise UserError(f"{path} is not a safetensors file: {e}") from None


def read_adapter(path: str | Path) -> tuple[dict, dict]:
    """(tensors, metadata) of an adapter file, with a clear error for anything that is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    metadata = read_metadata(path)
    try:
        return load_file(str(path)), metadata
    except (SafetensorError, OSError) as e:
        refuse_unreadable(path, e)  # neither damage nor absence, whatever safetensors says
        raise UserError(f"{path} is not a safetensors file: {e}") from None


def decode_duo(metadata: dict) -> dict:
    """The duo.* facts, JSON-decoded where they are JSON (numbers, lists), else the string."""
    duo = {}
    for key, value in metadata.items():
        if key.startswith("duo."):
            try:
                duo[key[4:]] = json.loads(value)
            except (json.JSONDecodeError, TypeError, ValueError, RecursionError):  # anyone's text: kept as text
                duo[key[4:]] = value
    return duo


def printable(text: str) -> str:
    """Metadata is anyone's text: control characters (terminal escapes) are shown escaped, never sent raw."""
    return "".join(c if c.isprintable() or c in "\t" else repr(c)[1:-1] for c in str(text))


def describe_adapter(path: str | Path) -> dict:
    """What `duo-unlearn info` shows: modules, rank, and the metadata with duo.* values decoded."""
    from safetensors import SafetensorError, safe_open

    metadata = read_metadata(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except (SafetensorError, OSError) as e:
        refuse_unreadable(path, e)  # neither damage nor absence, whatever safetensors says
        raise UserError(f"{path} is not a safetensors file: {e}") from None
    if not any("lora" in k.lower() for k in keys):
        raise UserError(f"{path} holds no LoRA modules (is it a full model or an embedding rather than a LoRA?)")
    modules = sorted({k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in keys})
    duo = decode_duo(metadata)
    kohya = all(k.startswith(("lora_unet_", "lora_te_")) and k.endswith(KOHYA_SUFFIXES) for k in keys)
    diffusers = all(k.startswith(("transformer.", "unet.")) and k.endswith((".lora_A.weight", ".lora_B.weight"))
                    for k in keys)
    return {
        "file": str(path),
        "modules": len(modules),
        "tensors": len(keys),
        "format": "kohya" if kohya else "diffusers" if diffusers else "other",  # SD3/Flux adapters: diffusers
        "kohya_names_only": kohya,
        "is_duo": bool(duo),
        "duo": duo,
        "metadata": {k: v for k, v in metadata.items() if not k.startswith("duo.")},
    }
