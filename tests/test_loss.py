import math

import torch

from duo_unlearn.trainer.loss import duo_loss, output_preservation
from duo_unlearn.trainer.train import training_target


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
    loss, inside = duo_loss(pred_w, ref_w, target_w, pred_l, ref_l, target_l, beta)
    assert torch.allclose(inside, torch.tensor([6.0, -7.5]))
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)


def test_duo_loss_is_log2_when_policy_equals_reference():
    x = torch.randn(4, 4, 3, 3)
    t = torch.randn(4, 4, 3, 3)
    loss, inside = duo_loss(x, x, t, x, x, t, beta=500.0)
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-6)
    assert torch.all(inside == 0)


def test_output_preservation_by_hand():
    a = torch.tensor([[[[1.0, 2.0]]]])
    b = torch.tensor([[[[0.0, 4.0]]]])
    assert math.isclose(output_preservation(a, b).item(), (1 + 4) / 2)


def test_training_target_epsilon_and_v_prediction():
    from diffusers import DDPMScheduler

    x0 = torch.randn(2, 4, 2, 2)
    eps = torch.randn(2, 4, 2, 2)
    t = torch.tensor([10, 700])
    eps_sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    assert torch.equal(training_target(eps_sched, x0, eps, t), eps)
    v_sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                            prediction_type="v_prediction")
    abar = v_sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    by_hand = abar.sqrt() * eps - (1 - abar).sqrt() * x0
    assert torch.allclose(training_target(v_sched, x0, eps, t), by_hand, atol=1e-6)
