"""ESD, the baseline: Erased Stable Diffusion (Gandikota et al., 2023), trained into the same LoRA as DUO.

The objective is a small pure function; `esd_step` builds its three UNet predictions for the training loop.
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


def esd_step(unet, raw_unet, accelerator, noise_scheduler, cache, idx, gen, t_range: tuple[int, int], eta: float):
    """One ESD step on B pairs. x_t: the pairs' unsafe images noised to a random t in t_range (not the paper's
    partial sampling from the model itself: the pair images are the model's own samples of the concept already,
    and noising them is one forward call instead of up to 50). c: each pair's unsafe prompt. ESD-u or ESD-x is
    the choice of LoRA target modules (self-attention, the default, is ESD-u-like; attn2.* is ESD-x).

    Returns (loss, logs).
    """
    device = cache.unsafe_mean.device
    B = len(idx)
    mean, std = cache.unsafe_mean[idx], cache.unsafe_std[idx]
    z = (mean + std * torch.randn(mean.shape, generator=gen).to(device) - cache.shift) * cache.scaling
    noise = torch.randn(z.shape, generator=gen).to(device)
    t = torch.randint(t_range[0], t_range[1], (B,), generator=gen).to(device)
    x_t = noise_scheduler.add_noise(z, noise, t)
    cond = cache.unsafe_cond[idx.to(cache.unsafe_cond.device)]
    with accelerator.autocast():
        pred = unet(x_t, t, cond).sample
        with torch.no_grad():
            raw_unet.disable_adapters()
            ref = unet(torch.cat([x_t, x_t]), torch.cat([t, t]),
                       torch.cat([cond, cache.empty.expand(B, -1, -1)])).sample
            raw_unet.enable_adapters()
    ref_cond, ref_uncond = ref.split(B)
    loss = esd_loss(pred, ref_cond, ref_uncond, eta)
    return loss, {"loss": loss.item(), "esd": loss.item()}
