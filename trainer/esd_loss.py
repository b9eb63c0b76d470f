"""ESD, the baseline: Erased Stable Diffusion (Gandikota et al., 2023), trained into the same LoRA as DUO.

The objective is a small pure function; `steps.esd` builds its three predictions for the training loop.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def esd_target(ref_cond: torch.Tensor, ref_uncond: torch.Tensor, eta: float) -> torch.Tensor:
    """ESD's negatively guided target (eq. 3 of the paper):

        ε* = ε_ref(x_t, t) − η [ε_ref(x_t, c, t) − ε_ref(x_t, t)]

    ε_ref is the frozen model (here: the UNet with the adapter disabled), c the concept's prompt, η the negative
    guidance scale (the paper's default 1). Detached: the target carries no gradient.
    """
    return (ref_uncond.float() - eta * (ref_cond.float() - ref_uncond.float())).detach()


def esd_loss(pred_cond: torch.Tensor, ref_cond: torch.Tensor, ref_uncond: torch.Tensor, eta: float) -> torch.Tensor:
    """L_ESD = ‖ε_θ(x_t, c, t) − ε*‖², mean over batch and latent dimensions (ε* from `esd_target`).

    The same squared error for v-prediction models, where the predictions are velocities: the target is the same
    linear combination of the reference's outputs.
    """
    return F.mse_loss(pred_cond.float(), esd_target(ref_cond, ref_uncond, eta))
