import pickle

import pytest
import torch
from safetensors.torch import save_file

from duo_unlearn.trainer.errors import UserError
from duo_unlearn.trainer.models import detect_family, family_from_keys, load_model, resolve_model_path
from duo_unlearn.trainer.testbed import TESTBED_DIR

SD1_KEYS = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
            "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(1)}


@pytest.mark.parametrize("key,family", [
    ("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", "sd1"),
    ("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight", "sd2"),
    ("conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight", "sdxl"),
    ("model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias", "sd3"),
])
def test_family_from_checkpoint_keys(key, family):
    assert family_from_keys(["model.diffusion_model.input_blocks.0.0.weight", key]) == family


def test_unknown_family_is_a_clear_error():
    with pytest.raises(UserError, match="unknown model family"):
        family_from_keys(["lora_unet_down_blocks_0.lora_down.weight"])


def test_folder_family_and_testbed_name(tiny_model):
    assert detect_family(tiny_model) == "sd1"
    assert resolve_model_path("testbed") == TESTBED_DIR
    loaded = load_model(tiny_model)
    assert loaded.family == "sd1" and loaded.name == "model" and len(loaded.sha256()) == 64


def test_single_file_without_configs_says_what_is_missing(tmp_path):
    path = tmp_path / "sd15-pruned.safetensors"
    save_file(SD1_KEYS, str(path))
    with pytest.raises(UserError, match="--config-dir"):
        load_model(path)
    with pytest.raises(UserError, match="not a diffusers model folder"):
        load_model(path, config_dir=tmp_path)


def test_ckpt_is_read_weights_only(tmp_path):
    ok = tmp_path / "model.ckpt"
    torch.save({"state_dict": SD1_KEYS}, ok)
    assert detect_family(ok) == "sd1"

    class Payload:  # anything that needs unpickling code is refused, never executed
        def __reduce__(self):
            return (print, ("executed!",))
    evil = tmp_path / "evil.ckpt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": Payload()}, f)
    with pytest.raises(UserError, match="weights-only"):
        detect_family(evil)


def test_unsupported_files(tmp_path):
    other = tmp_path / "model.bin.txt"
    other.write_text("x")
    with pytest.raises(UserError, match="unsupported model file type"):
        detect_family(other)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00\x01")
    with pytest.raises(UserError, match="not a readable safetensors"):
        detect_family(broken)


# -- single files that are not a full base model: said from the key names alone --

_SDXL_UNET = ("input_blocks.0.0.weight", "label_emb.0.0.weight", "input_blocks.4.1.proj_in.weight",
              "input_blocks.8.0.in_layers.0.weight")
_REFINER_UNET = ("input_blocks.0.0.weight", "label_emb.0.0.weight", "input_blocks.4.1.proj_in.weight",
                 "input_blocks.11.0.in_layers.0.weight")
_SD1_UNET = ("input_blocks.0.0.weight", "input_blocks.1.1.proj_in.weight", "input_blocks.11.0.in_layers.0.weight")
_DIFFUSERS_UNET = ("conv_in.weight", "time_embedding.linear_1.weight")
_VAE = "first_stage_model.encoder.conv_in.weight"


def _keys_file(tmp_path, name, keys, prefix=""):
    path = tmp_path / name
    save_file({prefix + k: torch.zeros(1) for k in keys}, str(path))
    return path


@pytest.mark.parametrize("name, keys, prefix", [
    ("sd_xl_refiner_1.0.safetensors",  # the full refiner checkpoint: bigG alone, as embedder 0
     ["conditioner.embedders.0.model.transformer.resblocks.0.attn.in_proj_weight",
      "conditioner.embedders.0.model.text_projection", _VAE] + ["model.diffusion_model." + k for k in _REFINER_UNET],
     ""),
    ("refiner_unet.safetensors", _REFINER_UNET, ""),
    ("refiner_unet_prefixed.safetensors", _REFINER_UNET, "model.diffusion_model."),
    ("refiner_unet_diffusers.safetensors", _DIFFUSERS_UNET + ("add_embedding.linear_1.weight",
                                                              "down_blocks.3.resnets.0.conv1.weight"), ""),
])
def test_sdxl_refiner_is_refused_by_name(tmp_path, name, keys, prefix):
    path = _keys_file(tmp_path, name, keys, prefix)
    with pytest.raises(UserError, match=f"^{name} is an SDXL refiner .*unlearn on the SDXL base") as e:
        detect_family(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name, keys, prefix, label", [
    ("xl_unet.safetensors", _SDXL_UNET, "", "an SDXL"),
    ("xl_unet_prefixed.safetensors", _SDXL_UNET, "model.diffusion_model.", "an SDXL"),
    ("xl_unet_diffusers.safetensors", _DIFFUSERS_UNET + ("add_embedding.linear_1.weight",
                                                         "down_blocks.2.attentions.0.proj_in.weight"), "", "an SDXL"),
    ("sd15_unet.safetensors", _SD1_UNET, "", "an SD 1.x/2.x"),
    ("sd15_unet_prefixed.safetensors", _SD1_UNET, "model.diffusion_model.", "an SD 1.x/2.x"),
    ("sd15_unet_diffusers.safetensors", _DIFFUSERS_UNET + ("down_blocks.0.attentions.0.proj_in.weight",), "",
     "an SD 1.x/2.x"),
])
def test_unet_only_files_say_a_full_checkpoint_is_needed(tmp_path, name, keys, prefix, label):
    path = _keys_file(tmp_path, name, keys, prefix)
    with pytest.raises(UserError, match=f"^{name} holds only a UNet \\({label} UNet\\).*full checkpoint .*diffusers "
                                        "folder") as e:
        detect_family(path)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="holds only a UNet"):
        load_model(path)  # before any configs are looked for
    with_vae = _keys_file(tmp_path, "no_te.safetensors", [prefix + k for k in keys] + [_VAE])
    with pytest.raises(UserError, match="holds a UNet and a VAE, no text encoder"):
        detect_family(with_vae)


def test_full_sdxl_base_and_v_pred_files_are_not_taken_for_partial_ones(tmp_path):
    from duo_unlearn.trainer.models import load_options

    te = ["conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
          "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight", _VAE]
    base = _keys_file(tmp_path, "xl_base.safetensors", te + ["model.diffusion_model." + k for k in _SDXL_UNET])
    vpred = _keys_file(tmp_path, "xl_vpred.safetensors",
                       te + ["v_pred", "ztsnr"] + ["model.diffusion_model." + k for k in _SDXL_UNET])
    assert detect_family(base) == detect_family(vpred) == "sdxl"
    assert load_options(base) == {} and load_options(vpred)["prediction_type"] == "v_prediction"
    assert detect_family(_keys_file(tmp_path, "sd15.safetensors", SD1_KEYS)) == "sd1"


def test_refiner_diffusers_folder_is_refused(tmp_path):
    import json

    folder = tmp_path / "stable-diffusion-xl-refiner-1.0"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionXLImg2ImgPipeline", "requires_aesthetics_score": True,
        "text_encoder": [None, None], "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}))
    with pytest.raises(UserError, match="is an SDXL refiner"):
        detect_family(folder)
    (folder / "model_index.json").write_text(json.dumps({  # an SDXL base saved from the img2img pipeline
        "_class_name": "StableDiffusionXLImg2ImgPipeline", "requires_aesthetics_score": False,
        "text_encoder": ["transformers", "CLIPTextModel"]}))
    assert detect_family(folder) == "sdxl"


def test_a_unet_beside_text_encoder_keys_of_unknown_layout_is_not_called_unet_only(tmp_path):
    path = _keys_file(tmp_path, "odd.safetensors", ["model.diffusion_model." + k for k in _SD1_UNET]
                      + ["cond_stage_model.some.other.layout.weight", _VAE])
    with pytest.raises(UserError, match="unknown model family"):
        detect_family(path)
