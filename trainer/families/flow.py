"""Rectified-flow noise (SD3/SD3.5), exactly as naver-ai/DUO's train/unlearn-sd3.py draws and mixes it.

x_t = (1 - σ) x0 + σ ε, and the transformer takes timestep = 1000 σ. Times t are on that 0..1000 scale (t = 1000 σ),
so add_noise/target recover σ = t / 1000.

The official script draws u ~ U[t_min/1000, t_max/1000) and then indexes the scheduler's *training* tables with it:
`timesteps[(u * 1000).long().clamp(0, 999)]`. Those tables run from σ = 1 down to σ ≈ 0 and are shifted
(σ' = s σ / (1 + (s - 1) σ), s = 3 for SD3 and SD3.5), so the shipped recipe (t_min 1, t_max 750) trains on
σ in (0.5, 1], the noisy end, and its output-preservation rows (u = 1 -> index 999) are pure noise given at
σ ≈ 0.003 (timestep ≈ 3). Every β/λ the paper reports was tuned against that, so "official" is the default; "uniform"
is the reading of the paper's text (σ ~ U[t_min/1000, t_max/1000), pure noise at σ = 1) for whoever wants to try it.
"""
from __future__ import annotations

from .base import NoiseProcess

SCHEDULES = ("official", "uniform")


def x0_estimate(velocity, x_t, t, num_train_timesteps: int = 1000):
    """EDM-style preconditioning as the official script applies it: model_pred * (-σ) + x_t."""
    s = (t.float() / num_train_timesteps).reshape(-1, *([1] * (x_t.ndim - 1))).to(x_t.device, x_t.dtype)
    return x_t - s * velocity


class FlowMatchProcess(NoiseProcess):
    """Flow matching with the official script's preconditioned target (precondition_outputs=1, its default).

    With preconditioning the compared quantity is the model's x0 estimate x_t - σ v and the target is x0, i.e. the
    flow loss ||v - (ε - x0)||² weighted by σ². The family's predict() returns x_t - σ v to match (see sd3.py).
    weighting_scheme stays at its default, logit_normal, which only changes how diffusers' own script samples
    times; DUO samples its own, and compute_loss_weighting_for_sd3 returns ones for it: no extra weighting.
    """

    def __init__(self, scheduler_config, schedule: str = "official", precondition: bool = True):
        from diffusers import FlowMatchEulerDiscreteScheduler

        from ..errors import UserError

        if schedule not in SCHEDULES:
            raise UserError(f"flow schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        # The training tables as constructed (set_timesteps has not run): descending, shifted, length 1000.
        self.timesteps = self.scheduler.timesteps.float().cpu()
        self.schedule = schedule
        self.precondition = precondition
        self.target_name = "x0 (preconditioned rectified flow)" if precondition else "flow velocity (noise - x0)"

    def draw_t(self, n, t_min, t_max, gen):
        import torch

        r = torch.rand(n, generator=gen)
        u = r * t_max / 1000 + (1 - r) * t_min / 1000
        if self.schedule == "uniform":
            return u * self.num_train_timesteps
        idx = (u * self.num_train_timesteps).long().clamp(0, self.num_train_timesteps - 1)
        return self.timesteps[idx]

    def sigma(self, t, ndim: int):
        s = t.float() / self.num_train_timesteps
        return s.reshape(-1, *([1] * (ndim - 1)))

    def add_noise(self, x0, noise, t):
        s = self.sigma(t, x0.ndim).to(x0.device, x0.dtype)
        return (1 - s) * x0 + s * noise

    def target(self, x0, noise, t):
        return x0 if self.precondition else noise - x0

    def output(self, model_out, x_t, t):
        """The denoiser's raw velocity in the space target() lives in."""
        return x0_estimate(model_out, x_t, t, self.num_train_timesteps) if self.precondition else model_out

    def swap_scale(self, t: float) -> float:
        # preconditioned: the target is x0 itself; else the flow ε − x0, whose x0 error is divided by σ
        sigma = min(max(float(t) / self.num_train_timesteps, 1e-3), 1.0)
        return 1.0 if self.precondition else 1 / sigma**2

    def pure_noise_t(self, n, device):
        import torch

        t = self.timesteps[-1] if self.schedule == "official" else float(self.num_train_timesteps)
        return torch.full((n,), float(t), device=device)
