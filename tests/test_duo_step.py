"""The DUO step prefers the safe twin: a fake denoiser whose adapter can lower only the safe images' error."""
import torch

from duo_unlearn.trainer.families import Conditioning
from duo_unlearn.trainer.latent_cache import LatentCache
from duo_unlearn.trainer.steps import METHODS, StepContext


class OnlySafeCanImprove(torch.nn.Module):
    """ε_θ(x) = s·x on rows whose mean is positive (the safe latents here), 0 elsewhere; ε_ref = 0 (adapter off).

    With the identity noise process below (x_t = x₀, target = x₀) the safe rows' error (1−s)²‖x₀‖² falls as s → 1
    and the unsafe rows' error cannot move: a step that prefers the safe twin pushes s up, one that prefers the
    unsafe image pushes it down.
    """

    def __init__(self):
        super().__init__()
        self.s = torch.nn.Parameter(torch.zeros(()))
        self.enabled = True

    def disable_adapters(self):
        self.enabled = False

    def enable_adapters(self):
        self.enabled = True

    def forward(self, x, t, encoder_hidden_states=None):
        safe = (x.flatten(1).mean(1) > 0.5).float().view(-1, *([1] * (x.ndim - 1)))
        return self.s * x * safe if self.enabled else torch.zeros_like(x)


class Identity:
    def draw_t(self, n, t_min, t_max, gen):
        return torch.zeros(n, dtype=torch.long)

    def add_noise(self, x0, noise, t):
        return x0

    def target(self, x0, noise, t):
        return x0

    def pure_noise_t(self, n, device):
        return torch.zeros(n, dtype=torch.long)


class Fam:
    def predict(self, denoiser, x, t, cond):
        return denoiser(x, t, **cond.kwargs)


def _context(net):
    n = 6
    ones = torch.ones(n, 4, 2, 2)
    cache = LatentCache(unsafe_mean=-ones, unsafe_std=torch.zeros_like(ones), safe_mean=ones,
                        safe_std=torch.zeros_like(ones), scaling=1.0, shift=0.0,
                        empty=Conditioning({"encoder_hidden_states": torch.zeros(1, 1, 1)}))
    return StepContext(family=Fam(), process=Identity(), denoiser=net, raw=net, cache=cache, t_range=(0, 1),
                       beta=10.0, lam=0.0)


def test_duo_step_lowers_the_safe_twins_error_and_rewards_it():
    net = OnlySafeCanImprove()
    ctx = _context(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(0)
    method = METHODS["duo"]
    rewards = []
    for _ in range(20):
        out = method.loss_on(ctx, method.draw(ctx, torch.randint(0, 6, (4,), generator=gen), gen))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        rewards.append((out.chosen_rewards.mean().item(), out.rejected_rewards.mean().item()))
    assert net.s.item() > 0.3  # the safe images' error fell
    chosen, rejected = rewards[-1]
    assert chosen > 0 and rejected == 0  # the winner's implicit reward rose; the loser's could not move
    assert out.logs["pref_acc"] == 1.0 and out.loss.item() < 0.69


class Uniform(Identity):
    def draw_t(self, n, t_min, t_max, gen):
        return torch.randint(t_min, t_max, (n,), generator=gen)


def test_shared_t_puts_both_images_of_a_pair_at_one_timestep():
    """Official DUO draws a timestep per image; `shared_t` (Diffusion-DPO) draws one per pair."""
    ctx = _context(OnlySafeCanImprove())
    ctx.process, ctx.t_range = Uniform(), (0, 1000)
    idx = torch.arange(4)
    own = METHODS["duo"].draw(ctx, idx, torch.Generator().manual_seed(0))
    assert not torch.equal(own["t_win"], own["t_lose"])
    ctx.shared_t = True
    shared = METHODS["duo"].draw(ctx, idx, torch.Generator().manual_seed(0))
    assert torch.equal(shared["t_win"], shared["t_lose"])
    assert len(set(shared["t_win"].tolist())) > 1  # still one draw per pair, not one per batch
