"""The model under a token attack, as its family sees it, so that no attack branches on the family.

Concept Inversion, UnlearnDiffAtk and Ring-A-Bell need four things of a model: its prompts encoded with some
token embeddings swapped in, differentiably, in every CLIP encoder it has (SD 1.x/2.x: one; SDXL and SD3: two);
its images as latents; (image, noise, t) draws from its noise process; and its denoising loss. The family supplies
each (conditioning, latent_scale, noise_process, predict); this module only holds them together. Prompts stay
text throughout: each tokenizer makes of a prompt exactly what it makes of it at generation time, and SD3's T5,
which no attack reaches, gets the prompt as written, as it does when the found prompt is generated.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import cached_property
from typing import Callable, Sequence

from ..errors import UserError


class AttackedModel:
    """A pipeline (its active adapter is the model under attack) and its family."""

    def __init__(self, pipe, family=None):
        from ..families import family_of

        self.pipe = pipe
        self.family = family or family_of(pipe)
        self.clip = self.family.clip_encoders(pipe)
        if not self.clip:
            raise UserError(f"the token attacks optimise CLIP token embeddings, and the {self.family.name.upper()} "
                            "family has none that carry the prompt's tokens")

    @property
    def denoiser(self):
        return self.family.denoiser(self.pipe)

    @property
    def device(self):
        """Where the model computes. Under diffusers' model offload (Ring-A-Bell in `eval` on a card that cannot
        hold the whole model; the white-box attacks are refused there) the denoiser waits on the CPU between calls
        and its hook names the device it runs on, where a family's conditioning makes its own tensors."""
        import torch

        hook = getattr(self.denoiser, "_hf_hook", None)
        if getattr(hook, "execution_device", None) is not None:
            return torch.device(hook.execution_device)
        return self.denoiser.device

    @cached_property
    def resolution(self) -> int:
        return self.family.native_resolution(self.pipe)

    @cached_property
    def process(self):
        return self.family.noise_process(self.pipe, self.resolution)

    @property
    def tokenizer(self):
        """The first CLIP tokenizer: the one found token ids are written out with."""
        return self.clip[0][0]

    def embedding_layers(self) -> list:
        return [encoder.get_input_embeddings() for _, encoder in self.clip]

    def encode(self, prompts: Sequence[str], swap: Callable | None = None):
        """The family's conditioning of the prompts, autograd as the caller has it; swap(k, input_ids, embeddings)
        -> embeddings replaces the k-th CLIP encoder's token embeddings (the forward hooks live for this call)."""
        hooks = [layer.register_forward_hook(lambda m, inputs, out, k=k: swap(k, inputs[0], out))
                 for k, layer in enumerate(self.embedding_layers())] if swap else []
        try:
            return self.family.conditioning(self.pipe, list(prompts), self.device, self.resolution)
        finally:
            for hook in hooks:
                hook.remove()

    def vocabulary(self, exclude: Sequence[str] = ()) -> list[int]:
        """Word tokens every CLIP tokenizer makes the same single token of (SDXL's and SD3's CLIP tokenizers share
        one vocabulary, so in practice: the first one's), so one id stands for the word in every encoder."""
        from .ring_a_bell import word_vocabulary

        words = [set(word_vocabulary(tok, exclude)) for tok, _ in self.clip[1:]]
        return [i for i in word_vocabulary(self.tokenizer, exclude) if all(i in w for w in words)]

    def max_length(self) -> int:
        return min(tok.model_max_length for tok, _ in self.clip)

    def latents(self, images):
        """The images at the model's native size, as the family scales its latents (the VAE's mean, no sampling)."""
        import numpy as np
        import torch

        size = self.resolution
        x = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB").resize((size, size)), dtype=np.float32))
                         for im in images]).permute(0, 3, 1, 2) / 127.5 - 1.0
        vae = self.pipe.vae
        with torch.no_grad():
            latents = torch.cat([vae.encode(x[i:i + 8].to(self.device, vae.dtype)).latent_dist.mean
                                 for i in range(0, len(x), 8)]).float()
        scaling, shift = self.family.latent_scale(vae)
        return (latents - shift) * scaling

    def draw(self, gen, n_images: int, shape, batch: int):
        """(image indices, noise, times) of one batch, the times drawn as the family trains: over the whole range."""
        import torch

        return (torch.randint(0, n_images, (batch,), generator=gen), torch.randn((batch, *shape), generator=gen),
                self.process.draw_t(batch, 0, 1000, gen))

    def loss(self, latents, noise, t, cond):
        """The family's denoising loss ‖target − prediction‖² (ε or v; SD3: the preconditioned x0)."""
        denoiser, dtype = self.denoiser, self.denoiser.dtype
        noise, t = noise.to(self.device), t.to(self.device)
        return mse_to_target(self.process, lambda x: self.family.predict(denoiser, x, t, cond.to(dtype=dtype)),
                             latents, noise, t, dtype)

    @contextmanager
    def frozen(self):
        """Denoiser, text encoders and VAE frozen and in eval mode while an attack optimises its input; each flag
        and mode is put back afterwards, since the pipeline may be in use elsewhere (a training tab, a node graph)."""
        modules = [self.denoiser, *self.family.text_modules(self.pipe), self.pipe.vae]
        flags = [(p, p.requires_grad) for m in modules for p in m.parameters()]
        modes = [(m, m.training) for m in modules]
        for p, _ in flags:
            p.requires_grad_(False)
        for m in modules:
            m.eval()
        try:
            yield
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
            for m, mode in modes:
                m.train(mode)


def mse_to_target(process, model, latents, noise, t, dtype):
    """‖target − model(x_t)‖², x_t and the target from the noise process; the model's input in `dtype` (the frozen
    model may be half precision on a GPU while latents, noise and the learnt vectors stay fp32)."""
    import torch.nn.functional as F

    target = process.target(latents, noise, t)
    pred = model(process.add_noise(latents, noise, t).to(dtype))
    return F.mse_loss(pred.float(), target.float())
