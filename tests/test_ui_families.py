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


def test_test_beds_are_offered_by_name_with_their_family(tmp_path, monkeypatch):
    """The Model box names every bundled test bed whose weights are present, with its family; testbed-xl shows SDXL;
    a test bed without weights (here testbed-sd3 pointed at an empty folder) is not offered, and choosing it says so."""
    import gradio as gr

    from duo_unlearn.extension.backends import testbeds_label
    from duo_unlearn.extension.tab import build_tab
    from duo_unlearn.trainer.testbed import TESTBEDS, available_testbeds

    monkeypatch.setitem(TESTBEDS, "testbed-sd3", tmp_path / "no_sd3")
    assert available_testbeds() == ["testbed", "testbed-xl"]
    assert testbeds_label() == "testbed (SD 1.x), testbed-xl (SDXL)"
    backend = StandaloneBackend(tmp_path / "Lora", model="testbed-xl")
    with gr.Blocks():
        c = build_tab(backend)
    assert "testbed-xl (SDXL)" in c["model"].info and "testbed-sd3" not in c["model"].info
    ctl = c["controller"]
    assert ctl.model_line("testbed-xl") == "**testbed-xl** — SDXL" == c["model_family"].value
    assert ctl.model_line("testbed") == "**testbed** — SD 1.x"
    assert "testbed-sd3" in ctl.model_line("testbed-sd3") and "--family sd3" in ctl.model_line("testbed-sd3")
    sd3 = tmp_path / "sd3"
    sd3.mkdir()
    (sd3 / "model_index.json").write_text('{"_class_name": "StableDiffusion3Pipeline"}')
    monkeypatch.setitem(TESTBEDS, "testbed-sd3", sd3)
    assert testbeds_label().endswith("testbed-sd3 (SD3)") and ctl.model_line("testbed-sd3") == "**testbed-sd3** — SD3"


def test_partial_sdxl_files_are_named_on_the_family_line(tmp_path):
    ctl = TabController(StandaloneBackend(tmp_path / "Lora", model="testbed"))
    refiner = tmp_path / "sd_xl_refiner_1.0.safetensors"
    save_file({"conditioner.embedders.0.model.transformer.resblocks.0.attn.in_proj_weight": torch.zeros(1),
               "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, str(refiner))
    assert ctl.model_line(str(refiner)).startswith("Family: unknown (sd_xl_refiner_1.0.safetensors is an SDXL refiner")
    unet = tmp_path / "xl_unet.safetensors"
    save_file({"input_blocks.0.0.weight": torch.zeros(1), "label_emb.0.0.weight": torch.zeros(1)}, str(unet))
    assert "holds only a UNet" in ctl.model_line(str(unet))


@pytest.mark.slow
def test_unlearn_then_compare_on_testbed_xl_by_name(tmp_path):
    """Unlearn concept and Compare on the SDXL test bed, chosen by its name, in the standalone tab."""
    from test_ui_tab import inputs, run_to_end

    backend = StandaloneBackend(tmp_path / "Lora", model="testbed-xl", device="cpu")
    ctl = TabController(backend)
    req = ctl.build_request(*inputs("testbed-xl", out_name="duo_red_xl", preview=False))
    assert req.cfg.model == "testbed-xl" and req.label.endswith("(red on testbed-xl — SDXL)")
    job, frames = run_to_end(ctl, *inputs("testbed-xl", out_name="duo_red_xl", preview=False))
    assert job.state == "done", job.error
    assert frames[-1][0].startswith("**Done**")
    info = backend.find_adapter("duo_red_xl")
    assert info.duo["base_model"] == "testbed-xl" and info.duo["family"] == "sdxl"
    assert info.metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    base, adapted, note = ctl.compare("testbed-xl", "a red square", "", 0, 4, 5.0, "duo_red_xl", 1.0,
                                      NONE, 1.0, NONE, 1.0, NONE, 1.0)
    assert base.size == adapted.size == (32, 32)
    assert np.abs(np.asarray(base, dtype=np.int16) - np.asarray(adapted, dtype=np.int16)).max() > 0
    assert "on testbed-xl (SDXL)" in note and "trained on" not in note  # the adapter's base model is this one
    assert backend._model[1].family == "sdxl" and backend._model[1].name == "testbed-xl"
