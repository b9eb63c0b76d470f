"""DUO's objective: Diffusion-DPO with the safe twin as winner, plus output preservation on pure noise."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error averaged over every dimension but the batch one."""
    return (pred.float() - target.float()).pow(2).mean(dim=tuple(range(1, pred.ndim)))


def duo_loss(pred_win: torch.Tensor, ref_win: torch.Tensor, target_win: torch.Tensor,
             pred_lose: torch.Tensor, ref_lose: torch.Tensor, target_lose: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The preference term of DUO (Park et al., 2024, eq. 8), batch-averaged:

        L_DPO = -log σ( -β [ (‖ε - ε_θ(x⁺_t)‖² - ‖ε - ε_ref(x⁺_t)‖²)
                           - (‖ε - ε_θ(x⁻_t)‖² - ‖ε - ε_ref(x⁻_t)‖²) ] )

    x⁺ (win) is the safe twin, x⁻ (lose) the unsafe image, ε the target (noise, velocity or flow),
    ‖·‖² the per-sample mean squared error over latent dimensions. Returns (loss, chosen_rewards,
    rejected_rewards) as TRL's DPO loss does: the per-pair implicit rewards -β(‖ε-ε_θ‖² - ‖ε-ε_ref‖²) of the
    winner and the loser (detached); their difference is the argument of σ.
    """
    chosen = -beta * (per_sample_mse(pred_win, target_win) - per_sample_mse(ref_win, target_win))
    rejected = -beta * (per_sample_mse(pred_lose, target_lose) - per_sample_mse(ref_lose, target_lose))
    return -F.logsigmoid(chosen - rejected).mean(), chosen.detach(), rejected.detach()


def output_preservation(pred_noise: torch.Tensor, ref_noise: torch.Tensor) -> torch.Tensor:
    """DUO's output-preserving regulariser on pure noise x_T at the last timestep:

        L_prior = ‖ε_θ(x_T, T) - ε_ref(x_T, T)‖²   (mean over batch and latent dimensions)

    It keeps the adapter's predictions on x_T, and so the model's behaviour away from the concept, unchanged.
    """
    return F.mse_loss(pred_noise.float(), ref_noise.float())
