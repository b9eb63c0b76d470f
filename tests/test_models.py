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
