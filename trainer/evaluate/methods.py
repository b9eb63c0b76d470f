"""What is evaluated: the base model, the base model with a negative prompt, and LoRA adapters, on one pipeline."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..runtime import no_text_encoder_lora_note

BASE, NEGATIVE, ADAPTER = "base", "negative_prompt", "adapter"


@dataclass
class Method:
    name: str
    kind: str  # base | negative_prompt | adapter
    adapter: Path | None = None
    weight: float = 1.0
    negative_prompt: str | None = None
    facts: dict = field(default_factory=dict)  # the adapter's duo.* metadata
    adapter_name: str | None = None  # its name on the pipeline once loaded

    def as_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "adapter": str(self.adapter) if self.adapter else None,
                "weight": self.weight, "negative_prompt": self.negative_prompt, "facts": self.facts}

    @property
    def same_model_as_base(self) -> bool:
        return self.kind != ADAPTER


def adapter_method(path: str | Path, weight: float = 1.0, taken: set[str] | None = None) -> Method:
    """A Method for a LoRA file, checked on the way in (exists, safetensors, LoRA keys), named after the file."""
    from ..export import describe_adapter

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is a folder, not an adapter file" if path.is_dir() else f"adapter not found: {path}")
    if path.suffix != ".safetensors":
        raise UserError(f"{path.name}: adapters are read as .safetensors LoRA files")
    try:
        info = describe_adapter(path)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file becomes one line for the user
        raise UserError(f"{path} is not a readable LoRA file: {e}") from None
    _check_weights(path)
    name, k = path.stem, 2
    while taken is not None and name in taken:
        name, k = f"{path.stem}-{k}", k + 1
    if taken is not None:
        taken.add(name)
    return Method(name, ADAPTER, path, weight, facts=info.get("duo", {}))


NAMES_READ = "kohya (lora_unet_…, lora_te_…) or diffusers (unet.…, transformer.…) LoRA names"
PEFT_PREFIX = "base_model.model."
BFL_PREFIXES = tuple(PEFT_PREFIX + block for block in ("double_blocks.", "single_blocks."))


def _check_weights(path: Path) -> None:
    """Refuse, before any model loads, a PEFT-format file (diffusers would load none of it and every image would
    be the base model's) and an adapter with NaN or inf weights (its images are noise, which DSR counts as the
    concept gone)."""
    import torch
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            # diffusers' Flux loader does read BFL-layout LoRAs (double_blocks, single_blocks) under this prefix
            if keys and all(k.startswith(PEFT_PREFIX) and not k.startswith(BFL_PREFIXES) for k in keys):
                raise UserError(f"{path} holds PEFT-format names ({PEFT_PREFIX}…), which this loader does not "
                                f"read: expected {NAMES_READ}")
            for key in keys:
                tensor = f.get_tensor(key)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    raise UserError(f"{path} holds NaN or infinite weights ({key}): its images would be noise, "
                                    "which DSR counts as the concept gone")
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable tensor becomes one line for the user
        raise UserError(f"{path} is not a readable LoRA file: {e}") from None


def load_adapters(pipe, methods: list[Method]) -> None:
    from ..families import family_of, loads_on

    model_family = family_of(pipe)
    for k, m in enumerate(methods):
        if m.kind != ADAPTER:
            continue
        recorded = m.facts.get("family")
        # an SDXL adapter on an SD 1.x model would otherwise fail with peft's list of every missing module
        if recorded and not loads_on(recorded, model_family.name):
            raise UserError(f"{m.adapter.name} was trained for the {recorded} family; this model is {model_family.name}")
        m.adapter_name = f"eval_{k}"
        try:
            with no_text_encoder_lora_note():
                pipe.load_lora_weights(str(m.adapter), adapter_name=m.adapter_name)
        except (ValueError, KeyError, RuntimeError) as e:
            lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()] or [""]
            first = next((ln for ln in lines if ln.startswith("size mismatch")), lines[0])  # the part that says why
            first = first if len(first) <= 200 else first[:200] + "…"
            raise UserError(f"{m.adapter.name} does not fit this model ({type(e).__name__}: {first})") from None
        loaded = {a for names in pipe.get_list_adapters().values() for a in names}
        if m.adapter_name not in loaded:  # diffusers skips names it does not know, with only a logged warning
            raise UserError(f"{m.adapter} holds no modules this loader reads: expected {NAMES_READ}")


@contextmanager
def activated(pipe, method: Method):
    """The pipeline as `method` has it: only its adapter on (or none); yields the negative prompt to use."""
    # adapters sit on the UNet or the transformer, whichever the family denoises with
    loaded = [a for names in pipe.get_list_adapters().values() for a in names] if hasattr(
        pipe, "get_list_adapters") else []
    if method.kind == ADAPTER:
        pipe.enable_lora()
        pipe.set_adapters([method.adapter_name], [method.weight])
    elif loaded:
        pipe.disable_lora()
    try:
        yield method.negative_prompt
    finally:
        if loaded:
            pipe.enable_lora()
