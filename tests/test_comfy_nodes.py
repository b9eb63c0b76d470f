"""The ComfyUI nodes against stand-ins for `folder_paths`, `comfy.utils` and `comfy.sd` with ComfyUI's signatures."""
import sys
import types

import pytest
import torch

import duo_unlearn
from duo_unlearn.nodes.adapter_nodes import DUOCompareImages, DUOLoraLoader, DUOLoraStack


@pytest.fixture()
def fake_comfy(tmp_path, monkeypatch, tiny_model, pair_dir):
    from duo_unlearn.trainer.config import LoraConfig, TrainConfig
    from duo_unlearn.trainer.train import train

    loras = tmp_path / "loras"
    loras.mkdir()
    train(TrainConfig(pairs=str(pair_dir), model=str(tiny_model), out=str(loras / "red.safetensors"), steps=1,
                      concept="red", lora=LoraConfig(rank=4, alpha=4)))
    (loras / "other.safetensors").write_bytes((loras / "red.safetensors").read_bytes())
    calls = []
    folder_paths = types.ModuleType("folder_paths")
    folder_paths.get_filename_list = lambda kind: sorted(p.name for p in loras.iterdir()) if kind == "loras" else []

    def get_full_path_or_raise(kind, name):
        path = loras / name
        if kind != "loras" or not path.is_file():
            raise FileNotFoundError(name)
        return str(path)
    folder_paths.get_full_path_or_raise = get_full_path_or_raise
    comfy = types.ModuleType("comfy")
    comfy_utils = types.ModuleType("comfy.utils")

    def load_torch_file(path, safe_load=False):
        from safetensors.torch import load_file
        assert safe_load
        return load_file(path)
    comfy_utils.load_torch_file = load_torch_file
    comfy_sd = types.ModuleType("comfy.sd")

    def load_lora_for_models(model, clip, lora, strength_model, strength_clip):
        calls.append((sorted(lora)[:1], strength_model, strength_clip))
        return model + [strength_model], clip + [strength_clip]
    comfy_sd.load_lora_for_models = load_lora_for_models
    comfy.utils, comfy.sd = comfy_utils, comfy_sd
    for name, mod in {"folder_paths": folder_paths, "comfy": comfy, "comfy.utils": comfy_utils,
                      "comfy.sd": comfy_sd}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return calls


def test_root_package_registers_nodes_without_host_imports():
    assert set(duo_unlearn.NODE_CLASS_MAPPINGS) == {"DUOLoraLoader", "DUOLoraStack", "DUOAdapterInfo",
                                                    "DUOCompareImages"}
    core = {"LoraLoader", "LoraLoaderModelOnly", "TrainLoraNode", "SaveLoRA", "LoraModelLoader"}
    assert not core & set(duo_unlearn.NODE_CLASS_MAPPINGS)
    assert "folder_paths" not in sys.modules or not hasattr(sys.modules["folder_paths"], "__file__")


def test_loader_applies_with_loraloader_semantics(fake_comfy):
    assert DUOLoraLoader.INPUT_TYPES()["required"]["lora_name"][0] == ["other.safetensors", "red.safetensors"]
    model, clip, info = DUOLoraLoader().load([], [], "red.safetensors", 0.8, 0.5)
    assert model == [0.8] and clip == [0.5]
    assert fake_comfy[0][0][0].startswith("lora_unet_")
    assert "concept: red" in info and "beta: 500" in info
    model, clip, _ = DUOLoraLoader().load([], [], "red.safetensors", 0, 0)  # zero strength: untouched
    assert model == [] and len(fake_comfy) == 1


def test_stack_applies_each_chosen_adapter(fake_comfy):
    model, clip, info = DUOLoraStack().stack([], [], lora_1="red.safetensors", strength_1=1.0,
                                             lora_2="None", strength_2=1.0, lora_3="other.safetensors",
                                             strength_3=0.5)
    assert model == [1.0, 0.5] and len(fake_comfy) == 2 and info.count("\n") == 1


def test_compare_puts_images_side_by_side():
    base, unlearned = torch.zeros(2, 64, 64, 3), torch.full((2, 64, 64, 3), 0.5)
    (out,) = DUOCompareImages().compare(base, unlearned)
    assert out.shape == (2, 64, 130, 3) and out[0, 0, 0, 0] == 0 and out[0, 0, -1, 0] == 0.5
    with pytest.raises(ValueError, match="differ in size"):
        DUOCompareImages().compare(base, torch.zeros(1, 64, 64, 3))
