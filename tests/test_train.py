import math

import pytest
import torch
from safetensors.torch import load_file

from duo_unlearn.trainer.config import TrainConfig
from duo_unlearn.trainer.errors import Cancelled
from duo_unlearn.trainer.export import describe_adapter
from duo_unlearn.trainer.models import load_model
from duo_unlearn.trainer.train import train


def _unet_out(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=g)
    h = torch.randn(2, 16, 32, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([10, 600]), h).sample


def test_reference_pass_is_the_base_model_bit_for_bit(tiny_model, pair_dir, tmp_path):
    base = _unet_out(load_model(tiny_model).pipe.unet)
    model = load_model(tiny_model)
    cfg = TrainConfig(pairs=str(pair_dir), model=str(tiny_model), out=str(tmp_path / "a.safetensors"),
                      steps=4, beta=5000, lr=1e-2, lam=0)
    train(cfg, model=model)
    unet = model.pipe.unet.eval()
    unet.disable_adapters()
    assert torch.equal(_unet_out(unet), base)
    unet.enable_adapters()
    assert not torch.allclose(_unet_out(unet), base, atol=1e-6)


def test_encoding_the_pairs_says_one_line_per_set_and_counts_every_image(tiny_model, tmp_path):
    from tiny_models import write_pair_dataset

    pairs = write_pair_dataset(tmp_path / "pairs", n=12)  # more than one batch of 8 per set
    events = []
    cfg = TrainConfig(pairs=str(pairs), model=str(tiny_model), out=str(tmp_path / "a.safetensors"), steps=1,
                      beta=10, lr=1e-3, lam=0)
    train(cfg, lambda e: events.append(e) if e.stage == "cache" else None)
    lines = [e.message for e in events if e.message]
    assert lines == ["encoding pair images: 12 unsafe", "encoding pair images: 12 safe"]
    assert [(e.step, e.total) for e in events] == [(8, 12), (12, 12)] * 2


@pytest.mark.slow
def test_cpu_training_run_exports_a_kohya_lora_that_diffusers_loads(tiny_model, pair_dir, tmp_path):
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    out = tmp_path / "red.safetensors"
    cfg = TrainConfig(pairs=str(pair_dir), model=str(tiny_model), out=str(out), steps=300, beta=1000, lr=1e-3,
                      lam=1000, concept="red", seed=0)
    result = train(cfg)
    dpo = [h["dpo"] for h in result.history]
    first, last = sum(dpo[:100]) / 100, sum(dpo[-100:]) / 100
    print(f"DPO term: first 100 steps {first:.4f}, last 100 steps {last:.4f}")
    assert last < first - 0.02  # the DPO term falls over the run

    tensors = load_file(str(out))
    assert tensors and all(k.startswith("lora_unet_") for k in tensors)
    assert all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in tensors)
    assert not any("lora_A" in k or "lora_B" in k for k in tensors)
    modules = {k.split(".")[0] for k in tensors}

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model))
    before = _unet_out(pipe.unet)
    pipe.load_lora_weights(str(out), adapter_name="duo")
    loaded = get_peft_model_state_dict(pipe.unet, adapter_name="duo")
    # every module in the file became a LoRA layer of the UNet (none dropped), and nothing else got one
    assert len(loaded) == 2 * len(modules)
    lora_layers = {n for n, m in pipe.unet.named_modules() if hasattr(m, "lora_A") and "duo" in m.lora_A}
    assert {n.replace(".", "_") for n in lora_layers} == {m.replace("lora_unet_", "") for m in modules}
    assert not getattr(pipe.text_encoder, "peft_config", None)
    down = next(k for k in tensors if k.endswith("attn1_to_q.lora_down.weight"))
    peft_key = down.replace("lora_unet_", "").replace(".lora_down.weight", "")
    match = [k for k in loaded if k.replace(".", "_").startswith(peft_key) and "lora_A" in k]
    assert len(match) == 1 and torch.equal(loaded[match[0]], tensors[down])
    assert not torch.allclose(_unet_out(pipe.unet), before, atol=1e-6)

    info = describe_adapter(out)
    assert info["kohya_names_only"] and info["is_duo"]
    assert info["duo"]["concept"] == "red" and info["duo"]["beta"] == 1000 and info["duo"]["pairs"] == 6
    assert info["metadata"]["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert info["metadata"]["ss_network_dim"] == "32" and info["metadata"]["ss_output_name"] == "red"


def test_v_prediction_model_trains(tiny_v_model, pair_dir, tmp_path):
    out = tmp_path / "v.safetensors"
    result = train(TrainConfig(pairs=str(pair_dir), model=str(tiny_v_model), out=str(out), steps=3))
    assert out.exists() and all(math.isfinite(h["loss"]) for h in result.history)


@pytest.mark.slow
@pytest.mark.parametrize("schedule, legacy", [("constant", False), ("cosine", False), ("cosine", True)],
                         ids=["constant", "cosine", "cosine-from-a-checkpoint-without-its-schedule"])
def test_resume_ends_with_the_same_adapter(schedule, legacy, tiny_model, pair_dir, tmp_path):
    """Bit for bit, with the learning rate of every step as the whole run's: a checkpoint carries the schedule, and
    one written before schedules were saved places the schedule at its step."""
    common = dict(pairs=str(pair_dir), model=str(tiny_model), steps=12, checkpoint_every=5, beta=5000, lr=1e-3,
                  lam=1000, seed=3, lr_scheduler=schedule, lr_warmup_steps=2 if schedule != "constant" else 0)
    whole = tmp_path / "whole.safetensors"
    whole_run = train(TrainConfig(out=str(whole), **common))

    parted = tmp_path / "parted.safetensors"

    def stop_at_8(event):
        if event.stage == "train" and event.step == 8:
            return False
    with pytest.raises(Cancelled):
        train(TrainConfig(out=str(parted), **common), progress=stop_at_8)
    assert not parted.exists()  # no adapter from a cancelled run
    assert (tmp_path / "parted.safetensors.checkpoints" / "step-000005").is_dir()
    if legacy:
        state_path = tmp_path / "parted.safetensors.checkpoints" / "step-000005" / "state.pt"
        state = torch.load(state_path, weights_only=True)
        del state["lr_schedule"]
        torch.save(state, state_path)
    resumed = train(TrainConfig(out=str(parted), resume=True, **common))

    assert [h["lr"] for h in resumed.history] == pytest.approx([h["lr"] for h in whole_run.history])
    a, b = load_file(str(whole)), load_file(str(parted))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "parted.safetensors.checkpoints").exists()  # spent once the adapter exists
