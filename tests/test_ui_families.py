"""The tab on SDXL and SD3: the family is shown next to the model without loading weights, the advanced runtime
settings reach UnlearnConfig, and Compare stacks a trained adapter on tiny SDXL and SD3 pipelines."""
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from duo_unlearn.extension.backends import StandaloneBackend
from duo_unlearn.extension.tab import NONE, TabController
from duo_unlearn.trainer.config import LoraConfig, TrainConfig
from duo_unlearn.trainer.errors import UserError
from duo_unlearn.trainer.families import get_family
from duo_unlearn.trainer.pairs import PairConfig, generate_pairs
from duo_unlearn.trainer.train import train
from tiny_families import build_tiny_sd3, build_tiny_sdxl

BUILDERS = {"sdxl": build_tiny_sdxl, "sd3": build_tiny_sd3}
LABELS = {"sdxl": "SDXL", "sd3": "SD3"}


def test_family_is_shown_next_to_the_model_without_loading_it(tmp_path, tiny_model, monkeypatch):
    import duo_unlearn.trainer.models as models

    def no_loading(*a, **k):
        raise AssertionError("the family line must not load weights")

    monkeypatch.setattr(models, "load_model", no_loading)
    ctl = TabController(StandaloneBackend(tmp_path / "Lora", model="testbed"))
    assert ctl.model_line("testbed") == "**testbed** — SD 1.x"
    assert ctl.model_line(str(tiny_model)).endswith("— SD 1.x")
    # a single-file SDXL checkpoint as A1111/ComfyUI keep them: its keys say SDXL
    single = tmp_path / "juggernautXL.safetensors"
    save_file({"conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight": torch.zeros(1),
               "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, str(single))
    assert ctl.model_line(str(single)) == "**juggernautXL** — SDXL"
    assert ctl.model_line(str(tmp_path / "missing.safetensors")).startswith("Family: unknown")


def test_advanced_runtime_settings_reach_the_config(tmp_path, tiny_model):
    from test_ui_tab import inputs

    ctl = TabController(StandaloneBackend(tmp_path / "Lora", model=str(tiny_model)))
    req = ctl.build_request(*inputs(tiny_model), "cpu", "bf16", "on", 24, 1)
    cfg = req.cfg
    assert (cfg.device, cfg.mixed_precision, cfg.gradient_checkpointing, cfg.resolution, cfg.micro_batch_pairs) == \
        ("cpu", "bf16", "on", 24, 1)
    assert req.plans[0].train.resolution == 24 and req.plans[0].pairs.resolution == 24
    assert req.plans[0].train.mixed_precision == "bf16" and req.plans[0].train.micro_batch_pairs == 1
    assert req.label.endswith("— SD 1.x)")
    default = ctl.build_request(*inputs(tiny_model), "", "auto", "auto", 0, 0).cfg  # emptied fields: defaults
    assert (default.device, default.resolution, default.micro_batch_pairs) == ("auto", None, None)
    for bad, message in [(("cpu", "fp8", "auto", 0, 0), "mixed_precision"), (("cpu", "no", "maybe", 0, 0),
                         "gradient_checkpointing"), (("gpu7", "no", "auto", 0, 0), "device"),
                         (("cpu", "no", "auto", 20, 0), "multiple of 8")]:
        with pytest.raises(UserError, match=message):
            ctl.build_request(*inputs(tiny_model), *bad)


@pytest.fixture(scope="module", params=["sdxl", "sd3"])
def trained(request, tmp_path_factory):
    """A tiny pipeline of the family and a DUO adapter for it in a LoRA folder (2 pairs, 2 training steps)."""
    name = request.param
    root = tmp_path_factory.mktemp(f"tab_{name}")
    folder = BUILDERS[name](root)
    generate_pairs(PairConfig(out=str(root / "pairs"), model=str(folder), unsafe_prompts=("a red square",),
                              safe_prompts=("a blue square",), num_pairs=2, sample_steps=2, batch_size=2))
    out = root / "Lora" / f"duo_{name}.safetensors"
    train(TrainConfig(pairs=str(root / "pairs"), model=str(folder), out=str(out), steps=2, beta=100, lr=5e-2,
                      lam=10, lora=LoraConfig(rank=4, alpha=4.0), concept="red", device="cpu", preview_prompts=()))
    return name, folder, root / "Lora"


@pytest.mark.slow
def test_compare_stacks_the_adapter_on_sdxl_and_sd3(trained):
    name, folder, lora_dir = trained
    backend = StandaloneBackend(lora_dir, model=str(folder), device="cpu")
    ctl = TabController(backend)
    assert ctl.model_line(str(folder)).endswith(f"— {LABELS[name]}")
    assert f"duo_{name}" in ctl.adapter_names() and "red" in ctl.adapter_table()
    base, adapted, note = ctl.compare(str(folder), "a red square", "", 0, 2, 3.0, f"duo_{name}", 1.0,
                                      NONE, 1.0, NONE, 1.0, NONE, 1.0)
    a, b = np.asarray(base, dtype=np.float32), np.asarray(adapted, dtype=np.float32)
    assert a.shape == b.shape and a.shape[-1] == 3
    assert np.abs(a - b).max() > 0  # the adapter was applied
    assert f"({LABELS[name]})" in note and f"duo_{name}×1" in note
    model = backend._model[1]
    assert model.family == name
    family = get_family(name)
    for module in [family.denoiser(model.pipe), *family.text_modules(model.pipe)]:  # nothing left attached
        assert not getattr(module, "peft_config", None)
        assert not any("lora_" in n for n, _ in module.named_parameters())
    base2, _, _ = ctl.compare(str(folder), "a red square", "", 0, 2, 3.0, f"duo_{name}", 0.0,
                              NONE, 1.0, NONE, 1.0, NONE, 1.0)
    assert np.array_equal(np.asarray(base2), np.asarray(base))  # the same loaded pipeline, clean, same seed
