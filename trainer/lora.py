"""The peft LoRA on the denoiser: add it, read it out, and switch it off for the reference prediction."""
from __future__ import annotations

from contextlib import contextmanager

from .errors import UserError

ADAPTER_NAME = "duo"


def _check_rank(modules: list, targets, rank: int) -> None:
    """A rank above every targeted layer's smaller side adds no capacity, only parameters: refuse it by name.
    (Narrower layers among wider ones are fine: peft keeps their update at full rank.)"""
    import torch

    sides = {name: min(m.in_features, m.out_features) for name, m in modules
             if isinstance(m, torch.nn.Linear) and any(name.endswith(t) for t in targets)}
    if sides and rank > max(sides.values()):
        widest = max(sides, key=sides.get)
        raise UserError(f"rank {rank} is larger than any targeted layer allows (the widest, {widest}, "
                        f"allows {sides[widest]}); choose --rank {sides[widest]} or less")


def targeted(name: str, targets) -> bool:
    """peft's rule for a target_modules list: the module's whole name, or its last dotted parts."""
    return any(name == t or name.endswith("." + t) for t in targets)


def check_targets(denoiser, targets, rank: int, family=None) -> None:
    """Every target names a module of this model, the rank fits them and (given the family) the saved file has a
    name for each; checked before any work is done."""
    modules = list(denoiser.named_modules())
    missing = [t for t in targets if not any(targeted(n, (t,)) for n, _ in modules)]
    if missing:
        raise UserError(f"no module of the model matches target(s) {', '.join(missing)}")
    _check_layer_kinds(modules, targets)
    _check_rank(modules, targets, rank)
    if family is not None:
        _check_exportable(modules, targets, family)


def _check_exportable(modules: list, targets, family) -> None:
    """SDXL adapters are saved in the original UNet's names, which A1111, Forge and ComfyUI read; a layer without
    one would otherwise fail at the save, after the whole run."""
    import torch

    wrapped = [n for n, m in modules if targeted(n, targets)
               and isinstance(getattr(m, "base_layer", m), (torch.nn.Linear, torch.nn.Conv2d))]
    bad = family.unexportable(wrapped)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise UserError(f"the {family.name} adapter file has no name for {shown}, so no web UI could load them: "
                        "target attention or resnet layers instead (e.g. attn1.to_q, attn2.to_k, ff.net.2, conv1)")


def _check_layer_kinds(modules: list, targets) -> None:
    """peft wraps linear and convolution layers only; a block name (attn1) or a norm would fail inside peft with a
    module repr as long as the block, so it is said here with the layers to name instead."""
    import torch

    for t in targets:
        # a layer wrapped by an earlier job's adapter is checked by the layer it wraps
        wrong = [(n, m) for n, m in modules if targeted(n, (t,))
                 and not isinstance(getattr(m, "base_layer", m), (torch.nn.Linear, torch.nn.Conv2d))]
        if wrong:
            name, module = wrong[0]
            layers = [n[len(name) + 1:] for n, m in modules
                      if n.startswith(name + ".") and isinstance(m, torch.nn.Linear)][:4]
            hint = f" (its layers: {', '.join(layers)})" if layers else ""
            raise UserError(f"target {t!r} names {type(module).__name__} modules ({name}), which LoRA cannot wrap: "
                            f"name linear or convolution layers instead{hint}")


def add_lora(denoiser, rank: int, alpha: float, targets) -> list:
    """A fresh adapter on the frozen denoiser; returns the trainable parameters (float32). Whether the family's file
    can name every target is the caller's check (train does it before the pairs are encoded)."""
    from peft import LoraConfig

    check_targets(denoiser, targets, rank)
    remove_lora(denoiser)
    denoiser.requires_grad_(False)
    denoiser.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                    target_modules=list(targets)), adapter_name=ADAPTER_NAME)
    params = [p for p in denoiser.parameters() if p.requires_grad]
    for p in params:  # trainable weights and so the optimizer state stay fp32 whatever the frozen weights are
        p.data = p.data.float()
    return params


def remove_lora(denoiser) -> None:
    """The next job on the same loaded model starts from the base model."""
    if ADAPTER_NAME in (getattr(denoiser, "peft_config", None) or {}):
        denoiser.delete_adapters(ADAPTER_NAME)


def lora_down_layers(denoiser) -> dict:
    """name → (adapted layer, its LoRA down-projection weight) for every adapted linear and convolution layer. A
    convolution's down-projection reads each k × k patch of its input, so its weight, flattened to (rank,
    channels·k·k), is a linear map of the patch. peft's own module names stay here: the saved file's keys are the
    family's (kohya) names."""
    import torch

    return {name: (m, m.lora_A[ADAPTER_NAME].weight) for name, m in denoiser.named_modules()
            if ADAPTER_NAME in getattr(m, "lora_A", {})
            and isinstance(m.lora_A[ADAPTER_NAME], (torch.nn.Linear, torch.nn.Conv2d))}


def lora_state(denoiser) -> dict:
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(denoiser, adapter_name=ADAPTER_NAME)


def set_lora_state(denoiser, state: dict) -> None:
    from peft.utils import set_peft_model_state_dict

    set_peft_model_state_dict(denoiser, state, adapter_name=ADAPTER_NAME)


@contextmanager
def adapters_disabled(denoiser):
    """ε_ref: the same network with the adapter off. Re-enabled even if the reference pass fails."""
    denoiser.disable_adapters()
    try:
        yield
    finally:
        denoiser.enable_adapters()
