"""The Flux family on tiny random FLUX.1 pipelines ([dev] and [schnell]): conditioning, packing, noise, guidance,
pipelines, export into diffusers, NF4/int8 quantisation on the CPU, detection, and a run through the training loop."""
from __future__ import annotations

import json
import math

import pytest
import torch

from duo_unlearn.trainer.errors import UserError
from duo_unlearn.trainer.families import FlowMatchProcess, get_family
from duo_unlearn.trainer.families.flow import x0_estimate
from duo_unlearn.trainer.families.flux import (GUIDANCE, T5_TOKENS, dynamic_shift, image_ids, pack, quantization,
                                               unpack)

from tiny_families import CLIP_WIDTH, build_tiny_flux

FLUX = get_family("flux")


@pytest.fixture(scope="module")
def dev_dir(tmp_path_factory):
    return build_tiny_flux(tmp_path_factory.mktemp("tiny_flux_dev"))


@pytest.fixture(scope="module")
def schnell_dir(tmp_path_factory):
    return build_tiny_flux(tmp_path_factory.mktemp("tiny_flux_schnell"), schnell=True)


def _load(folder, options=None):
    options = options or {}
    pipe = FLUX.pipeline_cls().from_pretrained(str(folder), local_files_only=True, **FLUX.load_kwargs(options))
    FLUX.after_load(pipe, options)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def dev(dev_dir):
    return _load(dev_dir)


@pytest.fixture(scope="module")
def schnell(schnell_dir):
    return _load(schnell_dir)


def _latents(n=2, side=8, seed=0):
    return torch.randn(n, 16, side, side, generator=torch.Generator().manual_seed(seed))


def _add_lora(denoiser, rank=4, alpha=8.0, seed=0):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    denoiser.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                    target_modules=list(FLUX.default_targets)), adapter_name="duo")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in denoiser.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return get_peft_model_state_dict(denoiser, adapter_name="duo")


def _lora_modules(denoiser, adapter="duo") -> list[str]:
    return sorted(n for n, m in denoiser.named_modules() if hasattr(m, "lora_A") and adapter in m.lora_A)


# -- conditioning --

def test_dev_conditioning_is_t5_states_clip_pooled_and_fixed_guidance(dev):
    cond = FLUX.encode_prompts(dev, ["", "a red square"], "cpu", 32).kwargs
    assert set(cond) == {"encoder_hidden_states", "pooled_projections", "guidance"}
    assert cond["encoder_hidden_states"].shape == (2, T5_TOKENS["dev"], dev.transformer.config.joint_attention_dim)
    assert cond["pooled_projections"].shape == (2, CLIP_WIDTH) == (2, dev.transformer.config.pooled_projection_dim)
    assert cond["guidance"].tolist() == [GUIDANCE, GUIDANCE] == [3.5, 3.5]
    assert all(v.dtype == torch.float32 for v in cond.values())
    with torch.no_grad():  # what the pipeline itself computes
        hidden, pooled, text_ids = dev.encode_prompt(["", "a red square"], prompt_2=None, max_sequence_length=512)
    assert torch.equal(cond["encoder_hidden_states"], hidden) and torch.equal(cond["pooled_projections"], pooled)
    assert text_ids.shape == (512, 3) and not torch.equal(hidden[0], hidden[1])


def test_schnell_conditioning_has_256_t5_tokens_and_no_guidance(schnell):
    cond = FLUX.encode_prompts(schnell, ["a red square"], "cpu", 32).kwargs
    assert set(cond) == {"encoder_hidden_states", "pooled_projections"}
    assert cond["encoder_hidden_states"].shape[1] == T5_TOKENS["schnell"] == 256


def test_guidance_follows_the_conditioning_rows():
    from duo_unlearn.trainer.families import Conditioning

    one = Conditioning({"encoder_hidden_states": torch.zeros(1, 4, 2), "guidance": torch.tensor([3.5])})
    both = Conditioning.cat([one.repeat(3), one.rows(torch.tensor([0]))])
    assert both.kwargs["guidance"].tolist() == [3.5] * 4


# -- packing and prediction --

def test_pack_round_trip_matches_the_pipeline_packing():
    from diffusers import FluxPipeline

    x = _latents(2, side=12)
    tokens = pack(x)
    assert tokens.shape == (2, 36, 64)
    assert torch.equal(tokens, FluxPipeline._pack_latents(x, 2, 16, 12, 12))
    assert torch.equal(unpack(tokens, 12, 12), x)
    assert torch.equal(image_ids(12, 12, "cpu", torch.float32),
                       FluxPipeline._prepare_latent_image_ids(2, 6, 6, "cpu", torch.float32))


def test_predict_returns_the_x0_estimate_in_latent_shape(dev):
    x = _latents()
    t = torch.tensor([900.0, 3.158])
    cond = FLUX.encode_prompts(dev, [""], "cpu", 16).repeat(2)
    with torch.no_grad():
        out = FLUX.predict(dev.transformer, x, t, cond)
        raw = dev.transformer(hidden_states=pack(x), timestep=t / 1000, guidance=torch.full((2,), 3.5),
                              encoder_hidden_states=cond.kwargs["encoder_hidden_states"],
                              pooled_projections=cond.kwargs["pooled_projections"],
                              txt_ids=torch.zeros(T5_TOKENS["dev"], 3), img_ids=image_ids(8, 8, "cpu", x.dtype)).sample
    assert out.shape == x.shape
    assert torch.allclose(out, x0_estimate(unpack(raw, 8, 8), x, t), atol=1e-6)


def test_guidance_reaches_the_transformer(dev):
    x, t = _latents(), torch.tensor([500.0, 700.0])
    cond = FLUX.encode_prompts(dev, [""], "cpu", 16).repeat(2)
    other = type(cond)({**cond.kwargs, "guidance": torch.full((2,), 1.0)})
    with torch.no_grad():
        assert not torch.allclose(FLUX.predict(dev.transformer, x, t, cond), FLUX.predict(dev.transformer, x, t, other))


def test_schnell_predicts_without_guidance(schnell):
    x = _latents()
    cond = FLUX.encode_prompts(schnell, [""], "cpu", 16).repeat(2)
    with torch.no_grad():
        assert FLUX.predict(schnell.transformer, x, torch.tensor([400.0, 999.0]), cond).shape == x.shape


# -- noise --

def test_shift_is_the_one_flux_samples_with_at_the_training_resolution(dev, schnell):
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    dev_config = {"use_dynamic_shifting": True, "shift": 3.0, "base_shift": 0.5, "max_shift": 1.15,
                  "base_image_seq_len": 256, "max_image_seq_len": 4096}
    assert dynamic_shift(dev_config, 1024, 8) == pytest.approx(math.exp(1.15))  # 4096 tokens: 3.158
    assert dynamic_shift(dev_config, 512, 8) == pytest.approx(math.exp(calculate_shift(1024)))
    assert dynamic_shift({"use_dynamic_shifting": False, "shift": 1.0}, 1024, 8) == 1.0  # schnell
    assert FLUX.noise_process(schnell).scheduler.config.shift == 1.0
    process = FLUX.noise_process(dev, 32)  # tiny VAE: factor 2, 32 px -> 8x8 = 64 tokens
    assert isinstance(process, FlowMatchProcess)
    assert process.scheduler.config.shift == pytest.approx(math.exp(calculate_shift(64)))


def test_sigma_draw_follows_the_sd3_official_schedule_on_the_shifted_table(dev):
    process = FLUX.noise_process(dev, 64 * 2 * dev.vae_scale_factor)  # 64x64 = 4096 tokens as at 1024 px: e^1.15
    s = math.exp(1.15)

    def shifted(u):
        return s * u / (1 + (s - 1) * u)

    t = process.draw_t(20000, 1, 750, torch.Generator().manual_seed(0))
    sigma = t / 1000
    assert set(t.tolist()) <= set(process.timesteps.tolist())
    assert sigma.min() >= shifted(0.251) - 1e-4 and sigma.max() <= shifted(0.999) + 1e-4
    assert sigma.min() < shifted(0.26)  # ≈ 0.515: the noisy end, as SD3's 0.501
    pure = process.pure_noise_t(2, "cpu")
    assert torch.allclose(pure, torch.full((2,), shifted(0.001) * 1000), atol=1e-3)  # the official last entry
    x0, noise = _latents(), _latents(seed=1)
    assert torch.allclose(process.add_noise(x0, noise, torch.tensor([250.0, 250.0])), 0.75 * x0 + 0.25 * noise)
    assert torch.equal(process.target(x0, noise, t[:2]), x0)  # preconditioned, as the SD3 recipe


# -- pipelines, targets, export --

def test_img2img_runs_on_the_same_modules(dev):
    edit = FLUX.img2img(dev)
    assert type(edit).__name__ == "FluxImg2ImgPipeline"
    assert edit.transformer is dev.transformer and edit.vae is dev.vae and edit.text_encoder_2 is dev.text_encoder_2
    image = edit(prompt="a blue square", image=torch.rand(1, 3, 32, 32), strength=0.5, num_inference_steps=2,
                 height=32, width=32, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 3, 32, 32)


def test_default_targets_are_the_attention_projections(dev_dir):
    transformer = _load(dev_dir).transformer
    _add_lora(transformer)
    modules = _lora_modules(transformer)
    double, single = transformer.config.num_layers, transformer.config.num_single_layers
    assert len(modules) == 4 * double + 3 * single  # single blocks have no to_out
    assert {m.split(".attn.")[1] for m in modules} == {"to_q", "to_k", "to_v", "to_out.0"}
    assert not any("add_" in m or "to_add_out" in m for m in modules)  # the text stream is not trained


def test_export_loads_in_diffusers_at_the_trained_scale(dev_dir, tmp_path):
    from safetensors.torch import save_file

    policy = _load(dev_dir)
    state = _add_lora(policy.transformer, rank=4, alpha=8.0)  # alpha != rank: scale 2
    tensors = FLUX.export(state, 8.0)
    assert all(k.startswith(("transformer.transformer_blocks.", "transformer.single_transformer_blocks."))
               and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in tensors)
    n_modules = len(_lora_modules(policy.transformer))
    assert len(tensors) == 2 * n_modules
    meta = FLUX.metadata(policy)
    save_file(tensors, str(tmp_path / "a.safetensors"), metadata=meta)

    fresh = _load(dev_dir)
    x, t = _latents(), torch.tensor([700.0, 950.0])
    cond = FLUX.encode_prompts(fresh, [""], "cpu", 16).repeat(2)
    with torch.no_grad():
        base = FLUX.predict(fresh.transformer, x, t, cond)
        ours = FLUX.predict(policy.transformer, x, t, cond)
        fresh.load_lora_weights(str(tmp_path / "a.safetensors"), adapter_name="loaded")
        loaded = FLUX.predict(fresh.transformer, x, t, cond)
    assert len(_lora_modules(fresh.transformer, "loaded")) == n_modules  # every module
    assert not torch.allclose(base, ours, atol=1e-4)
    assert torch.allclose(loaded, ours, atol=1e-5)


def test_metadata(dev, schnell):
    meta = FLUX.metadata(dev)
    assert meta["ss_base_model_version"] == "flux1" and meta["modelspec.architecture"] == "flux-1-dev/lora"
    assert meta["duo.guidance"] == "3.5" and meta["duo.quantized"] == "no" and meta["duo.flux_variant"] == "dev"
    meta = FLUX.metadata(schnell)
    assert meta["modelspec.architecture"] == "flux-1-schnell/lora" and meta["duo.guidance"] == "none"
    assert FLUX.metadata()["modelspec.architecture"] == "flux-1-dev/lora"
    assert json.dumps(meta) and all(isinstance(v, str) for v in meta.values())


def test_recipe():
    assert (FLUX.lr_base, FLUX.lambda_base, FLUX.recipe_resolution) == (3e-5, 1e6, None)
    assert FLUX.default_targets == get_family("sd3").default_targets


# -- quantisation (bitsandbytes runs NF4 and int8 on the CPU) --

@pytest.mark.parametrize("kind,layer", [("nf4", "Linear4bit"), ("int8", "Linear8bitLt")])
def test_quantized_load_trains_lora_on_the_cpu(dev_dir, kind, layer):
    pytest.importorskip("bitsandbytes")
    pipe = _load(dev_dir, {"quantize": kind})
    transformer = pipe.transformer
    assert quantization(transformer) == kind and FLUX.metadata(pipe)["duo.quantized"] == kind
    quantized = [n for n, m in transformer.named_modules() if type(m).__name__ == layer]
    linears = [n for n, m in _load(dev_dir).transformer.named_modules()
               if isinstance(m, torch.nn.Linear) and n.startswith(("transformer_blocks.", "single_transformer_blocks."))]
    assert sorted(quantized) == sorted(linears)

    from duo_unlearn.trainer.lora import add_lora, adapters_disabled, lora_state

    params = add_lora(transformer, 4, 4.0, FLUX.default_targets)
    lora_layer = transformer.get_submodule("transformer_blocks.0.attn.to_q")
    assert type(lora_layer.base_layer).__name__ == layer  # peft put its LoRA on the bitsandbytes layer
    x, t = _latents(), torch.tensor([600.0, 3.158])
    cond = FLUX.encode_prompts(pipe, [""], "cpu", 16).repeat(2)
    with torch.no_grad():
        for p in params:
            if p.shape[0] > 4:  # lora_B: non-zero, so that the adapter changes the output
                p.normal_(0, 0.1)
        with adapters_disabled(transformer):
            reference = FLUX.predict(transformer, x, t, cond)
    out = FLUX.predict(transformer, x, t, cond)
    out.pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    assert not torch.allclose(out.detach(), reference)
    assert set(FLUX.export(lora_state(transformer), 4.0)) == \
        {f"transformer.{k}" for k in lora_state(transformer)}  # the same names as unquantised


def test_quantize_options(monkeypatch):
    pytest.importorskip("bitsandbytes")
    assert FLUX.load_kwargs({}) == {} and FLUX.load_kwargs({"quantize": None}) == {}
    with pytest.raises(UserError, match="nf4"):
        FLUX.load_kwargs({"quantize": "int4"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert FLUX.load_kwargs({"quantize": "nf4"}) == {}  # the CPU: after_load quantises in place
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    config = FLUX.load_kwargs({"quantize": "nf4"})["quantization_config"]
    bnb = config.quant_mapping["transformer"]
    assert list(config.quant_mapping) == ["transformer"]  # T5 and CLIP are run once, cached and moved off
    assert bnb.load_in_4bit and bnb.bnb_4bit_quant_type == "nf4" and bnb.bnb_4bit_use_double_quant
    assert FLUX.load_kwargs({"quantize": "int8"})["quantization_config"].quant_mapping["transformer"].load_in_8bit


# -- detection --

def test_detection_of_flux_files_and_folders(tmp_path, dev_dir, schnell_dir):
    from safetensors.torch import save_file

    from duo_unlearn.trainer.models import detect_family, flux_variant_from_folder, load_options

    bfl_dev = ("double_blocks.0.img_attn.qkv.weight", "guidance_in.in_layer.weight")
    full_schnell = ("model.diffusion_model.double_blocks.0.img_attn.qkv.weight", "first_stage_model.encoder.conv_in.weight")
    nf4 = ("model.diffusion_model.double_blocks.0.img_attn.qkv.weight",
           "model.diffusion_model.double_blocks.0.img_attn.qkv.weight.absmax")
    for name, keys in (("dev", bfl_dev), ("schnell", full_schnell), ("nf4", nf4)):
        save_file({k: torch.zeros(1) for k in keys}, str(tmp_path / f"{name}.safetensors"))
    assert detect_family(tmp_path / "dev.safetensors") == detect_family(tmp_path / "schnell.safetensors") == "flux"
    assert load_options(tmp_path / "dev.safetensors") == {"flux_variant": "dev", "transformer_only": True}
    assert load_options(tmp_path / "schnell.safetensors") == {"flux_variant": "schnell"}
    with pytest.raises(UserError, match="bitsandbytes"):
        load_options(tmp_path / "nf4.safetensors")
    assert detect_family(dev_dir) == detect_family(schnell_dir) == "flux"
    # diffusers names: SD3's joint blocks also have add_q_proj; only Flux has single-stream blocks
    diffusers_flux = ("transformer_blocks.0.attn.add_q_proj.weight", "single_transformer_blocks.0.attn.to_q.weight")
    save_file({k: torch.zeros(1) for k in diffusers_flux}, str(tmp_path / "dflux.safetensors"))
    save_file({"transformer_blocks.0.attn.add_q_proj.weight": torch.zeros(1)}, str(tmp_path / "dsd3.safetensors"))
    assert "flux_variant" in load_options(tmp_path / "dflux.safetensors")
    assert "flux_variant" not in load_options(tmp_path / "dsd3.safetensors")
    assert (flux_variant_from_folder(dev_dir), flux_variant_from_folder(schnell_dir)) == ("dev", "schnell")


# -- the training loop --

@pytest.mark.slow
def test_training_loop_runs_on_tiny_flux_and_writes_an_adapter_diffusers_loads(dev_dir, pair_dir, tmp_path):
    from safetensors import safe_open

    from duo_unlearn.trainer.config import TrainConfig
    from duo_unlearn.trainer.models import LoadedModel
    from duo_unlearn.trainer.train import train

    source = tmp_path / "tiny-flux.safetensors"
    source.write_bytes(b"stands in for the checkpoint the adapter's hash names")
    model = LoadedModel(pipe=_load(dev_dir), family="flux", name="tiny-flux", source=source)
    out = tmp_path / "duo.safetensors"
    cfg = TrainConfig(pairs=str(pair_dir), model="tiny-flux", out=str(out), steps=3, resolution=32, beta=100,
                      gradient_checkpointing=True)
    cfg.lora.rank, cfg.lora.alpha, cfg.lora.target_modules = 4, 4.0, FLUX.default_targets
    result = train(cfg, model=model)
    assert len(result.history) == 3 and all(math.isfinite(h["loss"]) for h in result.history)
    with safe_open(str(out), framework="pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert keys and all(k.startswith("transformer.") for k in keys)
    assert meta["ss_base_model_version"] == "flux1"
    fresh = _load(dev_dir)
    fresh.load_lora_weights(str(out), adapter_name="loaded")
    assert len(_lora_modules(fresh.transformer, "loaded")) == len(keys) // 2


@pytest.mark.slow
def test_gpu_memory_benchmark_runs_flux_tiny_on_the_cpu(tmp_path):
    """benchmarks/gpu_memory.py --families flux --tiny: the path a GPU session measures the 12B model with."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_memory.py"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, str(script), "--tiny", "--families", "flux", "--steps", "2", "--warmup",
                          "1"], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [line for line in run.stdout.splitlines() if line.startswith("| project")]
    assert len(rows) == 5 and not any("failed" in r for r in rows)  # defaults, fp32/bf16 x checkpointing
    assert "### flux at 32 px" in run.stdout and "| official" not in run.stdout
