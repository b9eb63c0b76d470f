"""ESD, the baseline objective: its target on known numbers, and a tiny run that trains and exports a kohya LoRA."""
import math

import pytest
import torch
from safetensors.torch import load_file

from duo_unlearn.trainer.config import TrainConfig
from duo_unlearn.trainer.errors import UserError
from duo_unlearn.trainer.esd_loss import esd_loss, esd_target
from duo_unlearn.trainer.export import describe_adapter
from duo_unlearn.trainer.train import train


def test_esd_target_known_values():
    cond, uncond = torch.full((1, 4), 3.0), torch.full((1, 4), 1.0)
    # eps_ref(x,t) - eta (eps_ref(x,c,t) - eps_ref(x,t)) = 1 - 1 * (3 - 1) = -1
    assert torch.equal(esd_target(cond, uncond, 1.0), torch.full((1, 4), -1.0))
    assert torch.equal(esd_target(cond, uncond, 0.0), uncond)  # eta 0: plain unconditional prediction
    assert esd_loss(torch.full((1, 4), -1.0), cond, uncond, 1.0).item() == 0.0
    assert esd_loss(torch.zeros(1, 4), cond, uncond, 1.0).item() == pytest.approx(1.0)
    pred = torch.zeros(1, 4, requires_grad=True)
    ref = torch.ones(1, 4, requires_grad=True)
    esd_loss(pred, ref, ref * 0, 1.0).backward()
    assert pred.grad is not None and ref.grad is None  # the target carries no gradient


def test_esd_trains_and_exports(tiny_model, pair_dir, tmp_path):
    out = tmp_path / "esd.safetensors"
    cfg = TrainConfig(pairs=str(pair_dir), model=str(tiny_model), out=str(out), method="esd", steps=60,
                      lr=3e-3, concept="red", seed=0, esd_eta=1.0)
    result = train(cfg)
    losses = [h["esd"] for h in result.history]
    assert all(math.isfinite(v) for v in losses) and "dpo" not in result.history[0]
    first, last = sum(losses[:15]) / 15, sum(losses[-15:]) / 15
    print(f"ESD loss: first 15 steps {first:.5f}, last 15 steps {last:.5f}")
    assert last < first
    tensors = load_file(str(out))
    assert tensors and all(k.startswith("lora_unet_") and k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha"))
                           for k in tensors)
    info = describe_adapter(out)
    assert info["duo"]["method"] == "esd" and info["duo"]["esd_eta"] == 1.0 and info["duo"]["lambda"] == 0


def test_esd_default_lr_and_eta_validation():
    assert TrainConfig(method="esd").learning_rate == 1e-4
    assert TrainConfig(method="duo", beta=500).learning_rate == pytest.approx(6e-5)
    with pytest.raises(UserError, match="esd_eta"):
        TrainConfig(method="esd", esd_eta=0, pairs="x").validate()


def test_unlearn_esd_does_not_take_a_duo_presets_lr():
    from duo_unlearn.trainer.unlearn import UnlearnConfig, plan

    _, (esd,) = plan(UnlearnConfig(preset="testbed-red", method="esd", out="x.safetensors"))
    _, (duo,) = plan(UnlearnConfig(preset="testbed-red", out="x.safetensors"))
    assert esd.train.method == "esd" and esd.train.learning_rate == 1e-4
    from duo_unlearn.trainer.presets import get_preset

    assert duo.train.lr == get_preset("testbed-red").lr  # DUO still takes the preset's own lr
