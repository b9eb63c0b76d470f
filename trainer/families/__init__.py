"""Model families: one small module each; `get_family(name)` is how the rest of the trainer asks for one."""
from __future__ import annotations

from ..errors import UserError
from .base import Conditioning, DDPMProcess, Family, NoiseProcess
from .flow import FlowMatchProcess
from .flux import Flux
from .sd1 import SD1, SD2
from .sd3 import SD3
from .sdxl import SDXL

_FAMILIES: dict[str, Family] = {f.name: f for f in (SD1(), SD2(), SDXL(), SD3(), Flux())}


def register(family: Family) -> None:
    _FAMILIES[family.name] = family


def get_family(name: str) -> Family:
    if name not in _FAMILIES:
        raise UserError(f"the {name.upper()} family is not trained by this version; trained: "
                        f"{', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[name]


def family_of(pipe) -> Family:
    """The family whose pipeline class `pipe` is (or derives from); SD 2.x shares SD 1.x's pipeline and calls."""
    classes = {cls.__name__ for cls in type(pipe).__mro__}
    for family in _FAMILIES.values():
        if family.pipeline_class in classes:
            return family
    raise UserError(f"{type(pipe).__name__} is not the pipeline of a family this version knows")


def loads_on(recorded: str, model_family: str) -> bool:
    """An adapter trained for `recorded` loads on a model of `model_family`: the same pipeline (SD 1.x and 2.x share
    one; an SD 1.x adapter on SDXL would load none of its modules)."""
    return get_family(recorded).pipeline_class == get_family(model_family).pipeline_class


def trainable_families() -> tuple[str, ...]:
    return tuple(sorted(_FAMILIES))


__all__ = ["Conditioning", "DDPMProcess", "Family", "FlowMatchProcess", "NoiseProcess", "family_of", "get_family", "loads_on", "register", "trainable_families"]
