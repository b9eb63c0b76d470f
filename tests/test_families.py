"""The SDXL and SD3 families' pieces on tiny random pipelines: conditioning, noise, prediction, pipelines, export."""
from __future__ import annotations

import json

import pytest
import torch

from duo_unlearn.trainer.errors import UserError
from duo_unlearn.trainer.families import FlowMatchProcess, get_family
from duo_unlearn.trainer.families.flow import x0_estimate
from duo_unlearn.trainer.families.sd3 import T5_TOKENS, variant_architecture
from duo_unlearn.trainer.families.sdxl import diffusers_to_sgm

from tiny_families import build_tiny_sd3, build_tiny_sdxl

SDXL, SD3 = get_family("sdxl"), get_family("sd3")


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny_sdxl"))


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory):
    return build_tiny_sd3(tmp_path_factory.mktemp("tiny_sd3"))


def _load(family, folder, **kwargs):
    pipe = family.pipeline_cls().from_pretrained(str(folder), local_files_only=True, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sdxl(sdxl_dir):
    return _load(SDXL, sdxl_dir)


@pytest.fixture(scope="module")
def sd3(sd3_dir):
    return _load(SD3, sd3_dir)


def _latents(family, pipe, n=2, seed=0):
    side = family.native_resolution(pipe) // pipe.vae_scale_factor
    channels = family.denoiser(pipe).config.in_channels
    return torch.randn(n, channels, side, side, generator=torch.Generator().manual_seed(seed))


def _add_lora(denoiser, targets, rank=4, alpha=8.0, seed=0):
    """A peft adapter as the trainer adds it, with random (not zero) up weights so that it changes the output."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    denoiser.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                    target_modules=list(targets)), adapter_name="duo")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in denoiser.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return get_peft_model_state_dict(denoiser, adapter_name="duo")


def _lora_modules(denoiser) -> list[str]:
    return sorted(n for n, m in denoiser.named_modules() if hasattr(m, "lora_A") and "duo" in m.lora_A)


# -- SDXL --

def test_sdxl_conditioning_has_both_encoders_pooled_text_and_time_ids(sdxl):
    cond = SDXL.encode_prompts(sdxl, ["", "a red square"], "cpu", 16)
    hidden = cond.kwargs["encoder_hidden_states"]
    added = cond.kwargs["added_cond_kwargs"]
    width = sdxl.text_encoder.config.hidden_size + sdxl.text_encoder_2.config.hidden_size
    assert hidden.shape == (2, sdxl.tokenizer.model_max_length, width) == (2, 16, sdxl.unet.config.cross_attention_dim)
    assert added["text_embeds"].shape == (2, sdxl.text_encoder_2.config.projection_dim)
    assert added["time_ids"].tolist() == [[16, 16, 0, 0, 16, 16]] * 2  # original size, crop top-left, target size
    assert not torch.equal(hidden[0], hidden[1]) and not torch.equal(added["text_embeds"][0], added["text_embeds"][1])
    assert all(t.dtype == torch.float32 for t in (hidden, added["text_embeds"], added["time_ids"]))
    assert SDXL.encode_prompts(sdxl, [""], "cpu", 32).kwargs["added_cond_kwargs"]["time_ids"].tolist() == \
        [[32, 32, 0, 0, 32, 32]]


def test_sdxl_predict_shape_and_added_conditions_reach_the_unet(sdxl):
    x = _latents(SDXL, sdxl)
    t = torch.tensor([10, 500])
    cond = SDXL.encode_prompts(sdxl, [""], "cpu", 16).repeat(2)
    with torch.no_grad():
        out = SDXL.predict(sdxl.unet, x, t, cond)
        other = SDXL.encode_prompts(sdxl, [""], "cpu", 32).repeat(2)
        changed = SDXL.predict(sdxl.unet, x, t, other)
    assert out.shape == x.shape
    assert not torch.allclose(out, changed)  # only the time ids differ


def test_sdxl_img2img_runs_on_the_same_modules(sdxl):
    edit = SDXL.img2img(sdxl)
    assert edit.unet is sdxl.unet and edit.vae is sdxl.vae and edit.text_encoder_2 is sdxl.text_encoder_2
    image = edit(prompt="a blue square", image=torch.rand(1, 3, 16, 16), strength=0.5, num_inference_steps=2,
                 output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 3, 16, 16)


def test_sdxl_v_pred_single_file_options_switch_the_noise_process(sdxl_dir):
    pipe = _load(SDXL, sdxl_dir)
    assert SDXL.noise_process(pipe).prediction == "epsilon"
    assert SDXL.metadata(pipe)["modelspec.prediction_type"] == "epsilon"
    SDXL.after_load(pipe, {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True})
    process = SDXL.noise_process(pipe)
    assert process.prediction == "v_prediction"
    assert SDXL.metadata(pipe)["modelspec.prediction_type"] == "v"  # kohya's word: a host reading it samples right
    x0, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    last = process.pure_noise_t(1, "cpu")
    # zero terminal SNR: the last time is pure noise, and the velocity target there is -x0
    assert torch.allclose(process.add_noise(x0, noise, last), noise, atol=1e-6)
    assert torch.allclose(process.target(x0, noise, last), -x0, atol=1e-6)


def test_sdxl_default_targets_are_self_attention(sdxl_dir):
    unet = _load(SDXL, sdxl_dir).unet
    _add_lora(unet, SDXL.default_targets)
    modules = _lora_modules(unet)
    blocks = [n for n, _ in unet.named_modules() if n.rsplit(".", 2)[-2:-1] == ["transformer_blocks"]]
    assert modules and all(".attn1." in m for m in modules)
    assert len(blocks) > 1 and len(modules) == 4 * len(blocks)


def test_sdxl_sgm_names_follow_the_original_unet_layout():
    # SDXL base: attention in down levels 1-2, up levels 0-1 and the mid block (SGM input 4,5,7,8; output 0-5)
    assert diffusers_to_sgm("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q") == \
        "input_blocks.4.1.transformer_blocks.0.attn1.to_q"
    assert diffusers_to_sgm("down_blocks.2.attentions.1.proj_in") == "input_blocks.8.1.proj_in"
    assert diffusers_to_sgm("up_blocks.0.attentions.2.transformer_blocks.9.attn1.to_out.0") == \
        "output_blocks.2.1.transformer_blocks.9.attn1.to_out.0"
    assert diffusers_to_sgm("up_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k") == \
        "output_blocks.3.1.transformer_blocks.1.attn2.to_k"
    assert diffusers_to_sgm("mid_block.attentions.0.transformer_blocks.3.attn1.to_v") == \
        "middle_block.1.transformer_blocks.3.attn1.to_v"
    assert diffusers_to_sgm("down_blocks.0.resnets.1.conv2") == "input_blocks.2.0.out_layers.3"
    assert diffusers_to_sgm("mid_block.resnets.1.time_emb_proj") == "middle_block.2.emb_layers.1"
    with pytest.raises(ValueError):
        diffusers_to_sgm("down_blocks.0.downsamplers.0.conv")


def test_sdxl_targets_the_file_cannot_name_are_refused_before_training(sdxl_dir):
    """`conv` also matches the down/upsamplers, which the SGM names of the saved file do not cover: said before any
    work, not at the save after the whole run."""
    from duo_unlearn.trainer.errors import UserError
    from duo_unlearn.trainer.lora import check_targets

    unet = _load(SDXL, sdxl_dir).unet
    with pytest.raises(UserError, match=r"the sdxl adapter file has no name for .*downsamplers\.0\.conv.*target "
                                        "attention or resnet layers"):
        check_targets(unet, ("attn1.to_q", "conv"), 4, SDXL)
    check_targets(unet, ("attn1.to_q", "conv1", "conv2", "attn2.to_k", "ff.net.2"), 4, SDXL)
    check_targets(unet, ("conv",), 4)  # without the family (a plain peft check), any conv is a layer


def test_sdxl_export_is_kohya_sgm_and_diffusers_loads_it_to_the_same_output(sdxl_dir, tmp_path):
    from safetensors.torch import save_file

    policy = _load(SDXL, sdxl_dir)
    state = _add_lora(policy.unet, SDXL.default_targets, rank=4, alpha=8.0)
    tensors = SDXL.export(state, 8.0)
    modules = {k.rsplit(".", 2)[0] for k in tensors if k.endswith(".lora_down.weight")}
    assert len(modules) == len(_lora_modules(policy.unet)) and len(tensors) == 3 * len(modules)
    assert all(k.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_"))
               for k in tensors)
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight" in tensors
    assert all(float(v) == 8.0 for k, v in tensors.items() if k.endswith(".alpha"))
    save_file(tensors, str(tmp_path / "a.safetensors"), metadata=SDXL.metadata(policy))

    fresh = _load(SDXL, sdxl_dir)
    x, t = _latents(SDXL, fresh), torch.tensor([100, 700])
    cond = SDXL.encode_prompts(fresh, [""], "cpu", 16).repeat(2)
    with torch.no_grad():
        base = SDXL.predict(fresh.unet, x, t, cond)
        ours = SDXL.predict(policy.unet, x, t, cond)
        fresh.load_lora_weights(str(tmp_path / "a.safetensors"), adapter_name="loaded")
        loaded = SDXL.predict(fresh.unet, x, t, cond)
    assert len([n for n, m in fresh.unet.named_modules() if hasattr(m, "lora_A") and "loaded" in m.lora_A]) == \
        len(modules)
    assert not torch.allclose(base, ours, atol=1e-4)
    assert torch.allclose(loaded, ours, atol=1e-5)  # every module, at the trained scale


def test_sdxl_metadata():
    meta = SDXL.metadata()
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora" and meta["ss_v2"] == "False"
    assert "modelspec.prediction_type" not in meta and "modelspec.prediction_type" not in SD3.metadata()


def test_sd2_architecture_follows_its_prediction_type():
    """kohya's modelspec: SD 2.x 768-v (v-prediction) and 512 base (epsilon) are different architectures."""
    from types import SimpleNamespace

    sd2 = get_family("sd2")
    pipe = lambda kind: SimpleNamespace(scheduler=SimpleNamespace(config={"prediction_type": kind}))  # noqa: E731
    assert sd2.metadata(pipe("v_prediction"))["modelspec.architecture"] == "stable-diffusion-v2-768-v/lora"
    assert sd2.metadata(pipe("epsilon"))["modelspec.architecture"] == "stable-diffusion-v2-512/lora"
    assert sd2.metadata(pipe("epsilon"))["ss_v2"] == "True"


def test_single_file_options_read_v_pred_and_ztsnr(tmp_path):
    from safetensors.torch import save_file

    from duo_unlearn.trainer.models import detect_family, load_options

    key = "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"
    plain, vpred, edm = tmp_path / "xl.safetensors", tmp_path / "xl_v.safetensors", tmp_path / "cos.safetensors"
    save_file({key: torch.zeros(1)}, str(plain))
    save_file({key: torch.zeros(1), "v_pred": torch.zeros(0), "ztsnr": torch.zeros(0)}, str(vpred))
    save_file({key: torch.zeros(1), "edm_vpred.sigma_max": torch.tensor(120.0)}, str(edm))
    assert detect_family(vpred) == "sdxl"
    assert load_options(plain) == {}
    assert load_options(vpred) == {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True}
    assert load_options(tmp_path) == {}
    with pytest.raises(UserError, match="EDM"):
        load_options(edm)


def test_an_sd3_file_without_t5_weights_loads_without_t5(tmp_path):
    """sd3_medium_incl_clips (the file for small cards) carries CLIP-L/G and no T5: loaded as --drop-t5 would."""
    from safetensors.torch import save_file

    from duo_unlearn.trainer.models import detect_family, load_options

    mmdit = "model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias"
    clip = "text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight"
    t5 = "text_encoders.t5xxl.transformer.shared.weight"
    with_t5, clips_only = tmp_path / "sd3_medium_incl_clips_t5xxlfp16.safetensors", tmp_path / "incl_clips.safetensors"
    save_file({mmdit: torch.zeros(1), clip: torch.zeros(1), t5: torch.zeros(1)}, str(with_t5))
    save_file({mmdit: torch.zeros(1), clip: torch.zeros(1)}, str(clips_only))
    assert detect_family(clips_only) == detect_family(with_t5) == "sd3"
    assert load_options(with_t5) == {} and load_options(clips_only) == {"drop_t5": True}


# -- SD3 --

def _official_encoding(pipe, prompts, max_sequence_length):
    """naver-ai/DUO unlearn-sd3.py's encode_prompt, restated: CLIP-L/G penultimate states side by side, zero-padded
    to T5's width, then T5's states; pooled = both CLIP projections."""
    clips, pooled = [], []
    for tok, enc in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        out = enc(ids, output_hidden_states=True)
        pooled.append(out[0])
        clips.append(out.hidden_states[-2])
    ids = pipe.tokenizer_3(prompts, padding="max_length", max_length=max_sequence_length, truncation=True,
                           add_special_tokens=True, return_tensors="pt").input_ids
    t5 = pipe.text_encoder_3(ids)[0]
    clip = torch.cat(clips, dim=-1)
    clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
    return torch.cat([clip, t5], dim=-2), torch.cat(pooled, dim=-1)


def test_sd3_conditioning_is_the_official_encoding_with_77_t5_tokens(sd3):
    cond = SD3.encode_prompts(sd3, ["", "a red square"], "cpu", 16)
    with torch.no_grad():
        hidden, pooled = _official_encoding(sd3, ["", "a red square"], T5_TOKENS)
    assert cond.kwargs["encoder_hidden_states"].shape == (2, sd3.tokenizer.model_max_length + 77,
                                                          sd3.transformer.config.joint_attention_dim)
    assert torch.allclose(cond.kwargs["encoder_hidden_states"], hidden, atol=1e-6)
    assert torch.allclose(cond.kwargs["pooled_projections"], pooled, atol=1e-6)
    assert not torch.equal(hidden[0], hidden[1])


def test_sd3_without_t5(sd3_dir):
    kwargs = SD3.load_kwargs({"drop_t5": True})
    pipe = _load(SD3, sd3_dir, **kwargs)
    assert pipe.text_encoder_3 is None and pipe.tokenizer_3 is None
    assert all(m is not None for m in SD3.text_modules(pipe)) and len(SD3.text_modules(pipe)) == 2
    hidden = SD3.encode_prompts(pipe, ["a red square"], "cpu", 16).kwargs["encoder_hidden_states"]
    clip_len = pipe.tokenizer.model_max_length
    assert hidden.shape[1] == clip_len + T5_TOKENS  # diffusers' zero T5 block: the same shape as with T5
    assert torch.count_nonzero(hidden[:, clip_len:]) == 0 and torch.count_nonzero(hidden[:, :clip_len]) > 0
    assert SD3.metadata(pipe)["duo.t5_encoder"] == "dropped"
    assert SD3.load_kwargs({}) == {}


def test_flow_official_schedule_draws_the_shipped_sigma_range(sd3):
    process = SD3.noise_process(sd3)
    assert isinstance(process, FlowMatchProcess) and process.scheduler.config.shift == 3.0
    t = process.draw_t(20000, 1, 750, torch.Generator().manual_seed(0))
    sigma = t / 1000
    # indices 1..749 of the descending, shift-3 table: σ from shift(0.251) = 0.5013 up to shift(0.999) = 0.99967
    assert sigma.min() >= 0.5 and sigma.max() <= 0.9997 and sigma.min() < 0.51 and sigma.max() > 0.999
    assert set(t.tolist()) <= set(process.timesteps.tolist())
    prior = process.pure_noise_t(3, "cpu")
    assert torch.allclose(prior, torch.full((3,), 3 * 0.001 / (1 + 2 * 0.001) * 1000))  # index 999: t ≈ 2.994


def test_flow_uniform_schedule_and_noise_mixing():
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = FlowMatchEulerDiscreteScheduler(shift=3.0).config
    process = FlowMatchProcess(config, schedule="uniform")
    t = process.draw_t(20000, 1, 750, torch.Generator().manual_seed(0))
    assert t.min() >= 1 and t.max() < 750 and t.max() > 745
    assert process.pure_noise_t(2, "cpu").tolist() == [1000.0, 1000.0]
    x0, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    assert torch.allclose(process.add_noise(x0, noise, torch.tensor([1000.0, 1000.0])), noise)
    assert torch.allclose(process.add_noise(x0, noise, torch.tensor([0.0, 0.0])), x0)
    mid = process.add_noise(x0, noise, torch.tensor([250.0, 250.0]))
    assert torch.allclose(mid, 0.75 * x0 + 0.25 * noise)
    assert torch.equal(FlowMatchProcess(config, precondition=False).target(x0, noise, t[:2]), noise - x0)
    assert torch.equal(process.target(x0, noise, t[:2]), x0)
    with pytest.raises(UserError):
        FlowMatchProcess(config, schedule="logit_normal")


def test_flow_preconditioned_loss_is_sigma_squared_flow_loss():
    x0, noise, v = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([600.0, 800.0, 999.0])
    s = (t / 1000).view(-1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * noise
    pre = ((x0_estimate(v, x_t, t) - x0) ** 2).mean(dim=(1, 2, 3))
    flow = ((v - (noise - x0)) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(pre, (t / 1000) ** 2 * flow, rtol=1e-4)


def test_sd3_predict_returns_the_x0_estimate_in_latent_shape(sd3):
    x = _latents(SD3, sd3)
    t = torch.tensor([900.0, 2.994])
    cond = SD3.encode_prompts(sd3, [""], "cpu", 16).repeat(2)
    with torch.no_grad():
        out = SD3.predict(sd3.transformer, x, t, cond)
        raw = sd3.transformer(hidden_states=x, timestep=t, **cond.kwargs).sample
    assert out.shape == x.shape
    assert torch.allclose(out, x - (t / 1000).view(-1, 1, 1, 1) * raw, atol=1e-6)


def test_sd3_img2img_runs_on_the_same_modules(sd3):
    edit = SD3.img2img(sd3)
    assert edit.transformer is sd3.transformer and edit.text_encoder_3 is sd3.text_encoder_3
    image = edit(prompt="a blue square", image=torch.rand(1, 3, 16, 16), strength=0.5, num_inference_steps=2,
                 output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 3, 16, 16)


def test_sd3_targets_are_the_image_stream_attention(sd3_dir):
    transformer = _load(SD3, sd3_dir).transformer
    _add_lora(transformer, SD3.default_targets)
    modules = _lora_modules(transformer)
    n = transformer.config.num_layers
    assert len(modules) == 4 * n
    assert {m.split(".attn.")[1] for m in modules} == {"to_q", "to_k", "to_v", "to_out.0"}


def test_sd3_export_loads_in_diffusers_at_the_trained_scale(sd3_dir, tmp_path):
    from safetensors.torch import save_file

    policy = _load(SD3, sd3_dir)
    state = _add_lora(policy.transformer, SD3.default_targets, rank=4, alpha=8.0)  # alpha != rank: scale 2
    tensors = SD3.export(state, 8.0)
    assert all(k.startswith("transformer.transformer_blocks.") and k.endswith((".lora_A.weight", ".lora_B.weight"))
               for k in tensors)
    assert len(tensors) == 2 * len(_lora_modules(policy.transformer))
    meta = SD3.metadata(policy)
    assert meta["modelspec.architecture"] == "stable-diffusion-3-medium/lora" and meta["duo.t5_encoder"] == "used"
    save_file(tensors, str(tmp_path / "a.safetensors"), metadata=meta)

    fresh = _load(SD3, sd3_dir)
    x, t = _latents(SD3, fresh), torch.tensor([700.0, 950.0])
    cond = SD3.encode_prompts(fresh, [""], "cpu", 16).repeat(2)
    with torch.no_grad():
        base = SD3.predict(fresh.transformer, x, t, cond)
        ours = SD3.predict(policy.transformer, x, t, cond)
        fresh.load_lora_weights(str(tmp_path / "a.safetensors"), adapter_name="loaded")
        loaded = SD3.predict(fresh.transformer, x, t, cond)
    assert not torch.allclose(base, ours, atol=1e-4)
    assert torch.allclose(loaded, ours, atol=1e-5)


def test_sd3_variant_architectures():
    from types import SimpleNamespace as C

    assert variant_architecture(C(num_layers=24, dual_attention_layers=())) == "stable-diffusion-3-medium/lora"
    assert variant_architecture(C(num_layers=24, dual_attention_layers=tuple(range(13)))) == \
        "stable-diffusion-3-5-medium/lora"
    assert variant_architecture(C(num_layers=38, dual_attention_layers=())) == "stable-diffusion-3-5-large/lora"


def test_recipes():
    assert (SD3.lr_base, SD3.lambda_base, SD3.recipe_resolution) == (3e-5, 1e6, 512)
    assert SDXL.recipe_resolution is None and SDXL.lr_base == get_family("sd1").lr_base
    assert json.dumps(SD3.metadata())  # strings only, safetensors metadata


@pytest.mark.parametrize("family_name", ["sd3", "flux"])
def test_a_transformer_only_file_takes_the_rest_from_the_config_folder(family_name, tmp_path):
    """SAI's SD3.5 and BFL's Flux files, and shared fine-tunes, hold only the transformer: it comes from the file,
    the VAE and text encoders (weights included) from --config-dir; without that folder, one line says so."""
    from safetensors.torch import load_file, save_file

    from duo_unlearn.trainer.models import load_model
    from tiny_families import build_tiny_flux

    folder = (build_tiny_sd3 if family_name == "sd3" else build_tiny_flux)(tmp_path / "full")
    weights = load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    tuned = {k: v + 0.5 if k.endswith(".weight") and v.ndim == 2 else v for k, v in weights.items()}
    save_file(tuned, str(tmp_path / "tuned.safetensors"))
    model = load_model(tmp_path / "tuned.safetensors", config_dir=folder)
    assert model.family == family_name and model.name == "tuned"
    loaded = model.pipe.transformer.state_dict()
    # the file's transformer, not the folder's (Flux loads in bf16: the file's values, rounded alike)
    assert all(torch.equal(loaded[k], tuned[k].to(loaded[k].dtype)) for k in tuned)
    assert model.pipe.vae is not None and model.pipe.text_encoder is not None
    with pytest.raises(UserError, match="tuned.safetensors holds only the transformer: pass --config-dir"):
        load_model(tmp_path / "tuned.safetensors")


def test_the_config_folder_of_a_single_file_matches_its_variant(tmp_path):
    """ComfyUI's models/diffusers may hold SD3 Medium and SD3.5 Medium (or Flux dev and schnell) side by side: a
    file gets the folder of its own variant, whose shapes fit, whatever order the folders are listed in."""
    from safetensors.torch import load_file, save_file

    from duo_unlearn.trainer.config_folders import matching_config_dir, model_variant
    from tiny_families import build_tiny_flux

    folders = {"sd3": build_tiny_sd3(tmp_path / "sd3"), "sd35": build_tiny_sd3(tmp_path / "sd35", dual_attention=True),
               "dev": build_tiny_flux(tmp_path / "dev"), "schnell": build_tiny_flux(tmp_path / "schnell", schnell=True)}
    files = {}
    for name, folder in folders.items():
        files[name] = tmp_path / f"{name}.safetensors"
        save_file(load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors")), str(files[name]))
    assert model_variant(files["sd35"], "sd3") == model_variant(folders["sd35"], "sd3") != model_variant(
        folders["sd3"], "sd3")
    for family, names in (("sd3", ("sd3", "sd35")), ("flux", ("dev", "schnell"))):
        for order in (names, names[::-1]):
            listed = [folders["sd3" if family == "flux" else "dev"]] + [folders[n] for n in order]  # another family first
            for name in names:
                assert matching_config_dir(listed, family, files[name]) == folders[name]
    assert matching_config_dir([folders["dev"]], "sd3", files["sd3"]) is None
