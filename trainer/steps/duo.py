"""The DUO step: safe twin x⁺ wins, unsafe image x⁻ loses, plus output preservation on pure noise (and, when a
retain set is used, on noised retain images under their own prompt and the empty one)."""
from __future__ import annotations

from ..families import Conditioning
from ..loss import duo_loss, output_preservation
from .context import StepContext, StepOutput


def duo_draw(ctx: StepContext, idx, gen) -> dict:
    """Every random draw of a step for B pairs, made up front so micro-batches see the same draws as one batch."""
    import torch

    z_lose = ctx.cache.sample("unsafe", idx, gen)
    z_win = ctx.cache.sample("safe", idx, gen)
    noise = torch.randn(z_lose.shape, generator=gen).to(z_lose.device)  # one draw per pair, shared by both
    t = ctx.process.draw_t(len(idx) if ctx.shared_t else 2 * len(idx), *ctx.t_range, gen).to(z_lose.device)
    if ctx.shared_t:
        t = torch.cat([t, t])
    out = {"idx": idx, "z_lose": z_lose, "z_win": z_win, "noise": noise, "t_lose": t[:len(idx)],
           "t_win": t[len(idx):]}
    if ctx.lam_retain and ctx.cache.retain_size():
        r_idx = torch.randint(0, ctx.cache.retain_size(), (len(idx),), generator=gen)
        z_r = ctx.cache.sample("retain", r_idx, gen)
        out |= {"retain_idx": r_idx, "z_retain": z_r,
                "retain_noise": torch.randn(z_r.shape, generator=gen).to(z_r.device),
                "t_retain": ctx.process.draw_t(len(idx), *(ctx.retain_t_range or ctx.t_range), gen).to(z_r.device)}
    return out


def _retain_term(ctx: StepContext, draw: dict):
    """‖ε_θ(x^r_t, c) − ε_ref(x^r_t, c)‖² on noised retain images, c their own prompt and the empty prompt: the
    sampler mixes both branches (classifier-free guidance), so both are held."""
    import torch

    r_idx = draw["retain_idx"]
    x = ctx.process.add_noise(draw["z_retain"], draw["retain_noise"], draw["t_retain"])
    cond = Conditioning.cat([ctx.cache.retain_cond.rows(r_idx), ctx.cache.empty.repeat(len(r_idx))])
    return ctx.preservation(torch.cat([x, x]), torch.cat([draw["t_retain"]] * 2), cond, ctx.lam_retain)


def duo_loss_on(ctx: StepContext, draw: dict) -> StepOutput:
    """Policy and reference on [x⁻_t, x⁺_t, x_T]: the DPO term on the pairs, output preservation on pure noise x_T.
    In full precision all rows share one batched pass each; under half precision the x_T rows get their own
    full-precision pass (StepContext.preservation), which backpropagates at once. That pass, and the retain set's,
    run before the pairs' pass: had they run after it, the pairs' graph would still be held while they backpropagate,
    and the step's peak would be the sum of both graphs rather than the larger one."""
    import torch

    idx, noise = draw["idx"], draw["noise"]
    B = len(idx)
    x0 = torch.cat([draw["z_lose"], draw["z_win"]])
    pair_noise = torch.cat([noise, noise])
    t = torch.cat([draw["t_lose"], draw["t_win"]])
    x = ctx.process.add_noise(x0, pair_noise, t)
    cond = Conditioning.cat([ctx.cache.condition("unsafe", idx), ctx.cache.condition("safe", idx)])
    t_pure = ctx.process.pure_noise_t(B, t.device).to(t.dtype)
    batched = ctx.lam and ctx.full_precision()
    logs = {}
    retain = _retain_term(ctx, draw) if "retain_idx" in draw else None
    prior = ctx.preservation(noise, t_pure, ctx.cache.empty.repeat(B)) if ctx.lam and not batched else None
    if batched:
        x, t, cond = torch.cat([x, noise]), torch.cat([t, t_pure]), Conditioning.cat([cond, ctx.cache.empty.repeat(B)])
    pred = ctx.policy(x, t, cond)
    ref = ctx.reference(x, t, cond)
    target = ctx.process.target(x0, pair_noise, t[:2 * B])
    p_lose, p_win = pred[:B], pred[B:2 * B]
    r_lose, r_win = ref[:B], ref[B:2 * B]
    dpo, chosen, rejected = duo_loss(p_win, r_win, target[B:], p_lose, r_lose, target[:B], ctx.beta)
    if batched:
        prior = output_preservation(pred[2 * B:], ref[2 * B:])
    elif prior is None:
        prior = torch.zeros((), device=x.device)
    loss = dpo + ctx.lam * prior
    if retain is not None:
        loss = loss + ctx.lam_retain * retain if retain.requires_grad else loss
        logs["retain"] = retain.item()
    margin = chosen - rejected
    return StepOutput(loss, logs | {"loss": loss.item(), "dpo": dpo.item(), "prior": prior.item(),
                             "pref_acc": float((margin > 0).float().mean()),
                             "reward_margin": float(margin.mean())}, chosen, rejected)


def duo_step(ctx: StepContext, idx, gen) -> StepOutput:
    return duo_loss_on(ctx, duo_draw(ctx, idx, gen))
