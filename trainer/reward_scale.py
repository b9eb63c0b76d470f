"""How large a DPO margin means "the model now draws the twin": the scale that β should be set against.

DUO's preference term −log σ(β·m) stops pushing once β·m is a few units (−log σ(5) ≈ 0.007), m being the policy's
error gap between loser and winner relative to the reference (per-element mean squared error). A denoiser that, at
time t, mistakes the unsafe image for its safe twin errs on the unsafe one by k(t)·‖z⁻ − z⁺‖² (NoiseProcess.
swap_scale): the *full-swap margin*. So β·m_swap = κ says how far training goes before it stops: κ ≫ 5 stops at a
small fraction of the swap (samples do not change: the paper's β 500 on the test bed, κ ≈ 310), κ ≈ 5 stops about
at the swap. Measured in benchmarks/RESULTS.md ("Why the paper's β 500 does nothing on the test bed").
"""
from __future__ import annotations

SATURATION = 5.0  # β·m where the DPO term has stopped pushing: −log σ(5) ≈ 0.007


def full_swap_margin(cache, process, t_range: tuple[int, int]) -> tuple[float, float]:
    """(m_swap, t): k(t)·mean‖z⁻ − z⁺‖² over the pairs (posterior means), at the middle of the training t range."""
    t = (t_range[0] + t_range[1]) / 2
    d2 = (cache.unsafe_mean - cache.safe_mean).float().mul(cache.scaling).pow(2).mean()
    return float(d2) * process.swap_scale(t), t


def beta_for(kappa: float, m_swap: float) -> float:
    """The β at which the preference saturates at κ/SATURATION times the full swap."""
    return kappa / m_swap
