"""What training needs from the frozen VAE and text encoders, computed once: pair latents and conditioning."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .families import Conditioning, Family
from .pair_dataset import PairRecord, inside_dataset, load_image_tensor
from .progress import ProgressEvent, report


@dataclass
class LatentCache:
    """Posterior mean/std of every pair image (float32, on the training device); a fresh sample each step."""
    unsafe_mean: object
    unsafe_std: object
    safe_mean: object
    safe_std: object
    scaling: float
    shift: float
    empty: Conditioning  # the empty prompt, one row
    unsafe_cond: Conditioning | None = None  # per pair, when conditioning on prompts
    safe_cond: Conditioning | None = None
    resolution: int = 0  # the image size the latents were encoded at
    retain_mean: object = None  # the retain set (retain_set.py), when training uses it
    retain_std: object = None
    retain_cond: Conditioning | None = None  # each retain image's own prompt

    grown: list = field(default_factory=list)  # on-policy pairs added during training (a checkpoint keeps them)

    def retain_size(self) -> int:
        return 0 if self.retain_mean is None else len(self.retain_mean)

    def pair_count(self) -> int:
        return len(self.unsafe_mean)

    def add_pairs(self, grown: dict) -> None:
        """Append pairs: posterior mean/std of their unsafe and safe images, and `source`, the pair each one takes
        its conditioning rows from (a pair of the same unsafe prompt)."""
        import torch

        device = self.unsafe_mean.device
        for name in ("unsafe_mean", "unsafe_std", "safe_mean", "safe_std"):
            setattr(self, name, torch.cat([getattr(self, name), grown[name].to(device)]))
        source = grown["source"]
        unsafe, safe = self.unsafe_cond, self.safe_cond  # "unsafe" conditioning: one object for both
        if unsafe is not None:
            self.unsafe_cond = Conditioning.cat([unsafe, unsafe.rows(source)])
            self.safe_cond = self.unsafe_cond if safe is unsafe else Conditioning.cat([safe, safe.rows(source)])
        self.grown.append(grown)

    def sample(self, which: str, idx, gen):
        """z = (mean + std·ε − shift)·scaling for the pairs idx, ε from the CPU generator (same draws anywhere)."""
        import torch

        mean, std = {"unsafe": (self.unsafe_mean, self.unsafe_std), "safe": (self.safe_mean, self.safe_std),
                     "retain": (self.retain_mean, self.retain_std)}[which]
        eps = torch.randn(mean[idx].shape, generator=gen).to(mean.device)
        return (mean[idx] + std[idx] * eps - self.shift) * self.scaling

    def condition(self, which: str, idx) -> Conditioning:
        per_pair = self.unsafe_cond if which == "unsafe" else self.safe_cond
        return per_pair.rows(idx) if per_pair is not None else self.empty.repeat(len(idx))


def posterior(vae, x, device):
    """(mean, std) of the VAE's posterior for images x in [-1, 1] (N x 3 x H x W), float32 on `device`."""
    import torch

    with torch.no_grad():
        dist = vae.encode(x.to(device, vae.dtype)).latent_dist
    return dist.mean.float(), dist.std.float()


ENCODE_PIXELS = 4 * 512 * 512  # 4 images per VAE pass at 512 px, 1 at 1024: the encoder keeps 128 channels at full
# resolution, 0.5 GiB per fp32 tensor for one 1024 px image, several tensors at a time


def encode_batch(resolution: int) -> int:
    """Images per VAE encoder pass: its activations grow with the pixels, so fewer as the resolution rises (and at
    most 8 at small sizes: progress is reported per pass)."""
    return max(1, min(8, ENCODE_PIXELS // (resolution * resolution)))


def build_cache(pipe, family: Family, records: list[PairRecord], folder: Path, condition: str, device,
                resolution: int, progress, retain: list | None = None) -> LatentCache:
    import torch

    vae = pipe.vae
    per_pass = encode_batch(resolution)

    def encode(paths, what):
        nonlocal per_pass
        means, stds = [], []
        i = 0
        while i < len(paths):
            x = torch.stack([load_image_tensor(inside_dataset(folder, p), resolution)
                             for p in paths[i:i + per_pass]])
            try:
                mean, std = posterior(vae, x, device)
            except torch.OutOfMemoryError:
                mean = None  # handled below, once the error no longer holds the failed pass's tensors
            if mean is None:
                if per_pass == 1:
                    raise UserError(f"out of GPU memory encoding one pair image at {resolution} px with the VAE: "
                                    "set a smaller --resolution or free the GPU")
                torch.cuda.empty_cache()
                per_pass = max(1, per_pass // 2)  # the same images, fewer at a time
                continue
            means.append(mean)
            stds.append(std)
            # one line per set, then only the count: a line per batch filled the terminal (25 on the test bed)
            report(progress, ProgressEvent("cache", i + len(x), len(paths),
                                           f"encoding pair images: {len(paths)} {what}" if i == 0 else ""))
            i += len(x)
        return torch.cat(means), torch.cat(stds)

    um, us = encode([r.unsafe for r in records], "unsafe")
    sm, ss = encode([r.safe for r in records], "safe")
    scaling, shift = family.latent_scale(vae)
    cache = LatentCache(um, us, sm, ss, scaling, shift, family.encode_prompts(pipe, [""], device, resolution),
                        resolution=resolution)
    if condition in ("prompt", "unsafe"):
        cache.unsafe_cond = family.encode_prompts(pipe, [r.unsafe_prompt for r in records], device, resolution)
        # "unsafe": both images of a pair under the unsafe prompt, i.e. "given this prompt, prefer the twin"
        cache.safe_cond = (family.encode_prompts(pipe, [r.safe_prompt for r in records], device, resolution)
                           if condition == "prompt" else cache.unsafe_cond)
    if retain:
        cache.retain_mean, cache.retain_std = encode([r.image for r in retain], "retain")
        cache.retain_cond = family.encode_prompts(pipe, [r.prompt for r in retain], device, resolution)
    return cache
