"""The ESD baseline's step, trained into the same LoRA as DUO (objective in ..esd_loss)."""
from __future__ import annotations

from ..esd_loss import esd_loss
from ..families import Conditioning
from .context import StepContext, StepOutput


def esd_draw(ctx: StepContext, idx, gen) -> dict:
    import torch

    z = ctx.cache.sample("unsafe", idx, gen)
    noise = torch.randn(z.shape, generator=gen).to(z.device)
    t = ctx.process.draw_t(len(idx), *ctx.t_range, gen).to(z.device)
    return {"idx": idx, "x_t": ctx.process.add_noise(z, noise, t), "t": t}


def esd_loss_on(ctx: StepContext, draw: dict) -> StepOutput:
    """x_t: the pairs' unsafe images noised to a random t (not the paper's partial sampling from the model
    itself: the pair images are the model's own samples of the concept already, and noising them is one forward
    call instead of up to 50). c: each pair's unsafe prompt. ESD-u or ESD-x is the choice of LoRA targets."""
    import torch

    idx, x_t, t = draw["idx"], draw["x_t"], draw["t"]
    B = len(idx)
    cond = ctx.cache.unsafe_cond.rows(idx)
    pred = ctx.policy(x_t, t, cond)
    ref = ctx.reference(torch.cat([x_t, x_t]), torch.cat([t, t]), Conditioning.cat([cond, ctx.cache.empty.repeat(B)]))
    ref_cond, ref_uncond = ref.split(B)
    loss = esd_loss(pred, ref_cond, ref_uncond, ctx.esd_eta)
    return StepOutput(loss, {"loss": loss.item(), "esd": loss.item()})


def esd_step(ctx: StepContext, idx, gen) -> StepOutput:
    return esd_loss_on(ctx, esd_draw(ctx, idx, gen))
