"""trainer.runtime: the device/precision policy, checked on a CPU with torch.cuda monkeypatched where CUDA decisions
are tested, and placement of a tiny pipeline's components. Also models._load_single_file's online/offline choice."""
from pathlib import Path

import pytest
import torch

from duo_unlearn.trainer import runtime as rt
from duo_unlearn.trainer.errors import UserError
from duo_unlearn.trainer.runtime import (Runtime, RuntimeConfig, components_to, decide_checkpointing,
                                         estimate_training_bytes, place, resolve, use_sdpa)

GB = 2**30


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(rt, "_mps_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch):
    """Two CUDA GPUs as torch would report them; bf16 support switchable through the returned dict."""
    card = {"bf16": True}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: f"Fake GPU {i}")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: card["bf16"])
    return card


def test_auto_on_a_cpu_machine_is_cpu_fp32(cpu_only):
    r = resolve(RuntimeConfig())
    assert r.device == torch.device("cpu")
    assert r.frozen_dtype == r.compute_dtype == torch.float32 and r.mixed_precision == "no" and not r.half
    assert r.trainable_dtype == torch.float32
    assert r.accelerator_kwargs() == {"mixed_precision": "no", "cpu": True}
    line = r.describe(checkpointing=False)
    assert line == "device cpu, frozen weights fp32, LoRA fp32, no autocast, gradient checkpointing off"


def test_fp16_on_the_cpu_is_refused_with_one_line(cpu_only):
    for device in ("auto", "cpu"):
        with pytest.raises(UserError, match="fp16 needs a GPU") as e:
            resolve(RuntimeConfig(device=device, mixed_precision="fp16"))
        assert "\n" not in str(e.value)


def test_bf16_on_the_cpu_only_when_asked_for(cpu_only):
    r = resolve(RuntimeConfig(device="cpu", mixed_precision="bf16"))
    assert r.frozen_dtype == r.compute_dtype == torch.bfloat16 and r.mixed_precision == "bf16"
    assert resolve(RuntimeConfig(device="cpu", mixed_precision="fp32")).mixed_precision == "no"


@pytest.mark.parametrize("device", ["tpu9", "gpu", "cuda:x", "cuda:", "CPU0", ""])
def test_a_bad_device_is_refused_naming_the_choices(device):
    with pytest.raises(UserError, match="auto, cpu, cuda, cuda:N, mps"):
        resolve(RuntimeConfig(device=device))


@pytest.mark.parametrize("field, value", [("mixed_precision", "fp8"), ("gradient_checkpointing", "sometimes")])
def test_bad_precision_or_checkpointing_is_refused(field, value):
    with pytest.raises(UserError, match=field):
        RuntimeConfig(**{field: value}).validate()


def test_checkpointing_takes_bools_and_words():
    for value, expected in ((True, "on"), (False, "off"), ("ON", "on"), ("auto", "auto"), ("false", "off")):
        RuntimeConfig(gradient_checkpointing=value).validate()
        assert rt._checkpointing_setting(value) == expected


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_asked_for_without_cuda_is_refused(cpu_only, device):
    with pytest.raises(UserError, match=f"device {device} was asked for, but torch sees no CUDA GPU"):
        resolve(RuntimeConfig(device=device))


def test_mps_asked_for_without_mps_is_refused(cpu_only):
    with pytest.raises(UserError, match="no Apple GPU"):
        resolve(RuntimeConfig(device="mps"))


def test_auto_on_cuda_is_bf16_where_the_card_has_it_else_fp16(fake_cuda):
    r = resolve(RuntimeConfig())
    assert r.device == torch.device("cuda", 0) and r.device_name == "Fake GPU 0"
    assert r.frozen_dtype == r.compute_dtype == torch.bfloat16 and r.mixed_precision == "bf16"
    assert r.describe(True) == ("device cuda:0 (Fake GPU 0), frozen weights bf16, LoRA fp32, autocast bf16, "
                                "gradient checkpointing on")
    fake_cuda["bf16"] = False
    r = resolve(RuntimeConfig(device="cuda:1"))
    assert r.device == torch.device("cuda", 1) and r.mixed_precision == "fp16" and r.frozen_dtype == torch.float16
    with pytest.raises(UserError, match="bf16 is not supported by Fake GPU 0"):
        resolve(RuntimeConfig(device="cuda", mixed_precision="bf16"))
    assert resolve(RuntimeConfig(device="cuda", mixed_precision="no")).frozen_dtype == torch.float32


def test_a_cuda_index_beyond_the_cards_is_refused(fake_cuda):
    with pytest.raises(UserError, match="cuda:2 does not exist: this machine has 2 CUDA GPU"):
        resolve(RuntimeConfig(device="cuda:2"))


def test_auto_checkpointing_follows_the_estimate_against_free_memory():
    assert decide_checkpointing("auto", 10 * GB, 8 * GB) is True
    assert decide_checkpointing("auto", 5 * GB, 8 * GB) is False
    assert decide_checkpointing("auto", int(7.5 * GB), 8 * GB) is True  # inside the headroom
    assert decide_checkpointing("auto", 100 * GB, None) is False  # unknown free memory: run fast
    assert decide_checkpointing("on", 0, 100 * GB) is True and decide_checkpointing(True, 0, 100 * GB) is True
    assert decide_checkpointing("off", 100 * GB, 1) is False and decide_checkpointing(False, 100 * GB, 1) is False


def test_runtime_checkpointing_asks_the_device_for_free_memory(cpu_only, monkeypatch):
    r = resolve(RuntimeConfig(gradient_checkpointing="auto"))
    monkeypatch.setattr(rt, "free_memory_bytes", lambda device: 4 * GB)
    assert r.checkpointing(6 * GB) is True and r.checkpointing(2 * GB) is False
    assert r.free_bytes() == 4 * GB


def test_free_cuda_memory_stays_within_the_process_memory_fraction(monkeypatch):
    """A host that caps this process (torch.cuda.set_per_process_memory_fraction) leaves only the cap to the job."""
    import torch

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (100 * GB, 140 * GB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 6 * GB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 5 * GB)
    fraction = {"value": 1.0}
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

    def get_fraction(device):
        assert isinstance(device, int)  # torch refuses a bare "cuda" device here
        return fraction["value"]

    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", get_fraction, raising=False)
    assert rt.free_memory_bytes("cuda") == 101 * GB  # free + cached but unused
    fraction["value"] = 12 / 140  # a 12 GB card's worth
    assert rt.free_memory_bytes("cuda") == 7 * GB  # (12 - 6 reserved) + 1 cached but unused
    fraction["value"] = 4 / 140  # already past the cap: only the cached memory is left
    assert rt.free_memory_bytes("cuda") == 1 * GB


def test_the_memory_estimate_counts_each_term():
    sd15 = dict(denoiser_params=859_520_964, lora_params=1_594_368, latent_hw=(64, 64))
    one, two = estimate_training_bytes(batch_rows=3, **sd15), estimate_training_bytes(batch_rows=6, **sd15)
    activations = two - one  # the weights and LoRA terms do not grow with the batch
    assert activations > 0 and one - activations == 859_520_964 * 2 + 1_594_368 * 16
    assert estimate_training_bytes(batch_rows=3, checkpointing=True, **sd15) < one - activations * 0.75
    assert estimate_training_bytes(batch_rows=3, optimizer_state_bytes=2, **sd15) < one
    assert estimate_training_bytes(batch_rows=3, frozen_bytes=4, activation_bytes=4, **sd15) > one
    # SD 1.5, 4 pairs, half precision: between the frozen UNet alone and the 12 GB of the consumer card
    assert 1.7 * GB < estimate_training_bytes(batch_rows=12, **sd15) < 12 * GB


@pytest.fixture(scope="module")
def tiny_pipe(tmp_path_factory):
    from tiny_models import build_tiny_pipeline

    from duo_unlearn.trainer.models import load_model

    return load_model(build_tiny_pipeline(tmp_path_factory.mktemp("rt"), pretrain_steps=0)).pipe


def _modules(pipe):
    return {n: m for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}


def test_place_puts_every_component_on_one_device_in_the_frozen_dtype(tiny_pipe, cpu_only):
    r = resolve(RuntimeConfig(device="cpu", mixed_precision="bf16"))
    place(tiny_pipe, r)
    mods = _modules(tiny_pipe)
    assert set(mods) == {"unet", "vae", "text_encoder"}
    for name, module in mods.items():
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}, name
        assert {p.device for p in module.parameters()} == {torch.device("cpu")}, name
    place(tiny_pipe, resolve(RuntimeConfig(device="cpu")))
    assert all({p.dtype for p in m.parameters()} == {torch.float32} for m in _modules(tiny_pipe).values())


def test_components_to_moves_all_of_them_and_keeps_lora_fp32(tiny_pipe):
    from peft import LoraConfig

    unet = tiny_pipe.unet
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["attn1.to_q"]), adapter_name="t")
    try:
        components_to(tiny_pipe, "meta", torch.float16)  # a device this CPU machine can always "move" to
        for name, module in _modules(tiny_pipe).items():
            assert {p.device.type for p in module.parameters()} == {"meta"}, name
        lora = {p.dtype for n, p in unet.named_parameters() if ".lora_" in n}
        frozen = {p.dtype for n, p in unet.named_parameters() if ".lora_" not in n}
        assert lora and frozen
        assert lora == {torch.float32} and frozen == {torch.float16}
    finally:
        unet.delete_adapters("t")


def test_the_vae_stays_fp32_under_fp16_when_its_config_asks(tiny_pipe):
    r = Runtime(torch.device("cpu"), torch.float16, torch.float16, "fp16", "off")
    tiny_pipe.vae.register_to_config(force_upcast=True)
    assert r.vae_dtype(tiny_pipe.vae) == torch.float32
    tiny_pipe.vae.register_to_config(force_upcast=False)
    assert r.vae_dtype(tiny_pipe.vae) == torch.float16
    bf16 = Runtime(torch.device("cpu"), torch.bfloat16, torch.bfloat16, "bf16", "off")
    tiny_pipe.vae.register_to_config(force_upcast=True)
    assert bf16.vae_dtype(tiny_pipe.vae) == torch.bfloat16  # bf16 has fp32's range: nothing to overflow


def test_use_sdpa_replaces_classic_processors_only():
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                layers_per_block=1, norm_num_groups=8, cross_attention_dim=32, attention_head_dim=2,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    # diffusers' default on torch 2 is already SDPA: nothing to change
    assert {type(p) for p in unet.attn_processors.values()} == {AttnProcessor2_0}
    assert use_sdpa(unet) == 0

    class Custom(AttnProcessor):
        pass

    names = list(unet.attn_processors)
    unet.set_attn_processor({n: Custom() if i == 0 else AttnProcessor() for i, n in enumerate(names)})
    assert use_sdpa(unet) == len(names) - 1
    kinds = [type(unet.attn_processors[n]) for n in names]
    assert kinds[0] is Custom and set(kinds[1:]) == {AttnProcessor2_0}


# -- models._load_single_file: offline only when the user is --

def _capture_single_file(monkeypatch):
    from diffusers import StableDiffusionPipeline

    seen = {}

    def fake(cls, path, **kwargs):
        seen.update(kwargs, path=path)
        return "pipe"

    monkeypatch.setattr(StableDiffusionPipeline, "from_single_file", classmethod(fake))
    return seen


from duo_unlearn.trainer.families import get_family  # noqa: E402


def SD1():
    return get_family("sd1")


def test_single_file_fetches_configs_when_online(monkeypatch, tmp_path):
    from duo_unlearn.trainer.models import _load_single_file

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    seen = _capture_single_file(monkeypatch)
    assert _load_single_file(tmp_path / "model.safetensors", None, torch.float32, SD1(), {}) == "pipe"
    assert seen["local_files_only"] is False and "config" not in seen


@pytest.mark.parametrize("var, value", [("HF_HUB_OFFLINE", "1"), ("HF_HUB_OFFLINE", "true"),
                                        ("TRANSFORMERS_OFFLINE", "YES")])
def test_single_file_stays_local_when_offline(monkeypatch, tmp_path, var, value):
    from duo_unlearn.trainer.models import _load_single_file

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv(var, value)
    seen = _capture_single_file(monkeypatch)
    _load_single_file(tmp_path / "model.safetensors", None, torch.float32, SD1(), {})
    assert seen["local_files_only"] is True


def test_single_file_with_a_config_dir_stays_local_even_online(monkeypatch, tmp_path):
    from duo_unlearn.trainer.models import _load_single_file

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "model_index.json").write_text("{}")
    seen = _capture_single_file(monkeypatch)
    _load_single_file(tmp_path / "model.safetensors", tmp_path / "cfg", torch.float32, SD1(), {})
    assert seen["local_files_only"] is True and Path(seen["config"]) == tmp_path / "cfg"


def test_offline_single_file_failure_says_why(monkeypatch, tmp_path):
    from diffusers import StableDiffusionPipeline

    from duo_unlearn.trainer.models import _load_single_file

    def missing(cls, path, **kwargs):
        raise OSError("not in cache")

    monkeypatch.setattr(StableDiffusionPipeline, "from_single_file", classmethod(missing))
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set.*--config-dir"):
        _load_single_file(tmp_path / "model.safetensors", None, torch.float32, SD1(), {})
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    with pytest.raises(UserError, match="could not be fetched from the Hugging Face Hub.*--config-dir"):
        _load_single_file(tmp_path / "model.safetensors", None, torch.float32, SD1(), {})


def test_lora_load_notes_that_say_nothing_new_are_dropped_and_the_rest_kept():
    """DUO adapters hold no text-encoder keys (diffusers' note for each is noise), and a failed load is raised and
    said by the caller in one line (diffusers' logged copy of it would come first); any other warning stays."""
    import logging

    from duo_unlearn.trainer.runtime import _DropRepeatedLoraNotes

    def shown(message):
        return _DropRepeatedLoraNotes().filter(logging.LogRecord("diffusers", logging.WARNING, "", 0, message, (), None))

    assert not shown("No LoRA keys associated to CLIPTextModel found with the prefix='text_encoder'.")
    assert not shown("Loading eval_1 was unsuccessful with the following error: \nsize mismatch for x")
    assert shown("Loading adapter weights from state_dict led to unexpected keys not found in the model: a, b")
    assert shown("Loading pipeline components")
