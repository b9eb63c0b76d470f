"""β from the pairs: the full-swap margin, and β = κ / margin in training."""
import pytest
import torch

from duo_unlearn.trainer.config import TrainConfig
from duo_unlearn.trainer.export import decode_duo, read_metadata
from duo_unlearn.trainer.latent_cache import LatentCache
from duo_unlearn.trainer.reward_scale import beta_for, full_swap_margin
from duo_unlearn.trainer.train import train


def _ddpm(prediction):
    from duo_unlearn.trainer.families.base import DDPMProcess

    return DDPMProcess({"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
                        "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": prediction})


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_swap_scale_is_the_error_of_mistaking_one_image_for_another(prediction):
    """Predict the target as if x_t came from z' while it came from z: the squared error is k(t)·(z − z')²."""
    proc = _ddpm(prediction)
    z, z2, eps = torch.randn(3, 1, 4, 8, 8).unbind(0)
    t = torch.tensor([375])
    x_t = proc.add_noise(z, eps, t)
    a = proc.scheduler.alphas_cumprod[375]
    eps_wrong = (x_t - a.sqrt() * z2) / (1 - a).sqrt()  # the noise that would explain x_t from z'
    wrong = proc.target(z2, eps_wrong, t)
    err = (wrong - proc.target(z, eps, t)).pow(2).mean()
    assert err.item() == pytest.approx(proc.swap_scale(375) * (z - z2).pow(2).mean().item(), rel=1e-4)


def test_full_swap_margin_and_beta_for():
    proc = _ddpm("epsilon")
    mean = torch.zeros(2, 4, 8, 8)
    cache = LatentCache(mean, mean, mean + 0.5, mean, scaling=2.0, shift=0.0, empty=None)
    m, t = full_swap_margin(cache, proc, (0, 750))
    assert t == 375 and m == pytest.approx(1.0 * proc.swap_scale(375))  # (0.5·2)² = 1 per element
    assert beta_for(5.0, m) * m == pytest.approx(5.0)


def test_training_with_kappa_sets_beta_from_the_pairs(tiny_model, pair_dir, tmp_path):
    out = tmp_path / "k.safetensors"
    messages = []
    train(TrainConfig(pairs=str(pair_dir), model=str(tiny_model), out=str(out), steps=1, kappa=5.0, beta=123.0,
                      lr=1e-4, lam=0.0), progress=lambda e: messages.append(e.message or ""))
    facts = decode_duo(read_metadata(out))
    assert facts["beta"] != 123.0 and facts["kappa"] == pytest.approx(5.0, rel=1e-3)
    assert facts["beta"] * facts["swap_margin"] == pytest.approx(5.0, rel=1e-3)
    assert any("full-swap margin" in m for m in messages)
