import math

import torch

from duo_unlearn.trainer.loss import duo_loss, output_preservation
from duo_unlearn.trainer.families import DDPMProcess


def test_duo_loss_matches_hand_computation():
    # 2 pairs of 1x1x2 "latents": every squared error can be done by hand.
    target_w = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 0.0]]]])
    target_l = torch.tensor([[[[0.0, 2.0]]], [[[1.0, 1.0]]]])
    pred_w = torch.tensor([[[[1.0, 1.0]]], [[[0.0, 2.0]]]])   # errors: (0+1)/2=0.5, (0+4)/2=2
    ref_w = torch.tensor([[[[0.0, 0.0]]], [[[0.0, 0.0]]]])    # errors: (1+0)/2=0.5, 0
    pred_l = torch.tensor([[[[0.0, 0.0]]], [[[1.0, 1.0]]]])   # errors: (0+4)/2=2, 0
    ref_l = torch.tensor([[[[0.0, 2.0]]], [[[0.0, 1.0]]]])    # errors: 0, (1+0)/2=0.5
    beta = 3.0
    # pair 1: win diff 0.5-0.5=0, lose diff 2-0=2 -> inside = -3*(0-2) = 6
    # pair 2: win diff 2-0=2, lose diff 0-0.5=-0.5 -> inside = -3*(2.5) = -7.5
    expected = (-math.log(1 / (1 + math.exp(-6))) - math.log(1 / (1 + math.exp(7.5)))) / 2
    loss, chosen, rejected = duo_loss(pred_w, ref_w, target_w, pred_l, ref_l, target_l, beta)
    assert torch.allclose(chosen, torch.tensor([0.0, -6.0]))  # -β × (winner's error change)
    assert torch.allclose(rejected, torch.tensor([-6.0, 1.5]))
    assert torch.allclose(chosen - rejected, torch.tensor([6.0, -7.5]))
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)


def test_duo_loss_is_log2_when_policy_equals_reference():
    x = torch.randn(4, 4, 3, 3)
    t = torch.randn(4, 4, 3, 3)
    loss, chosen, rejected = duo_loss(x, x, t, x, x, t, beta=500.0)
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-6)
    assert torch.all(chosen == 0) and torch.all(rejected == 0)


def test_output_preservation_by_hand():
    a = torch.tensor([[[[1.0, 2.0]]]])
    b = torch.tensor([[[[0.0, 4.0]]]])
    assert math.isclose(output_preservation(a, b).item(), (1 + 4) / 2)


def test_training_target_epsilon_and_v_prediction():
    from diffusers import DDPMScheduler

    x0 = torch.randn(2, 4, 2, 2)
    eps = torch.randn(2, 4, 2, 2)
    t = torch.tensor([10, 700])
    eps_proc = DDPMProcess(DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).config)
    assert torch.equal(eps_proc.target(x0, eps, t), eps)
    v_proc = DDPMProcess(DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       prediction_type="v_prediction").config)
    abar = v_proc.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    by_hand = abar.sqrt() * eps - (1 - abar).sqrt() * x0
    assert torch.allclose(v_proc.target(x0, eps, t), by_hand, atol=1e-6)
    assert torch.allclose(v_proc.add_noise(x0, eps, t), abar.sqrt() * x0 + (1 - abar).sqrt() * eps, atol=1e-6)
    assert torch.equal(v_proc.pure_noise_t(3, "cpu"), torch.full((3,), 999))
