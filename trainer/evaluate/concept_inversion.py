"""Concept Inversion (Pham et al., 2024): a white-box attack on an unlearned model.

A new token's input embedding is learnt by textual inversion on images of the concept, with the unlearned model
(UNet + adapter, text encoder, VAE) frozen; if the concept is only hidden rather than gone, the token brings it
back. Defaults follow the paper's appendix: Adam, lr 5e-3, batch 4; the number of steps is a setting.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Sequence

from ..progress import ProgressEvent, report
from .prompts import replace_words

DEFAULT_TEMPLATE = "a photo of {}"


@dataclass
class InversionResult:
    token: str
    token_id: int
    embedding: object  # 1-D tensor, now also the token's row of the text encoder's input embeddings
    losses: list[float] = field(default_factory=list)
    eval_loss_before: float = 0.0  # the loss on fixed (image, noise, t) draws, at the initial embedding
    eval_loss_after: float = 0.0

    def as_dict(self) -> dict:
        return {"token": self.token, "losses": [round(v, 6) for v in self.losses],
                "eval_loss_before": self.eval_loss_before, "eval_loss_after": self.eval_loss_after}


def token_prompts(prompts: Sequence[str], words: Sequence[str], token: str,
                  template: str | None = None) -> list[str]:
    """The prompts with the concept's words replaced by the token; a prompt without them (or every prompt, when
    a template such as "a photo of {}" is given) becomes the template filled with the token."""
    out = []
    for p in prompts:
        new = None if template else replace_words(p, words, token)
        out.append(new if new is not None else (template or DEFAULT_TEMPLATE).format(token))
    return out


def add_token(pipe, token: str, init_word: str | None = None) -> int:
    """Add `token` to the tokenizer and a row for it to the text encoder; the row starts as `init_word`'s
    embedding when that is one token, else as the mean embedding."""
    import torch

    tok, te = pipe.tokenizer, pipe.text_encoder
    if token not in tok.get_vocab():
        tok.add_tokens([token])
        te.resize_token_embeddings(len(tok), mean_resizing=False)  # the row is set just below
    token_id = tok.convert_tokens_to_ids(token)
    weight = te.get_input_embeddings().weight
    init_ids = tok(init_word, add_special_tokens=False).input_ids if init_word else []
    with torch.no_grad():
        weight[token_id] = weight[init_ids[0]] if len(init_ids) == 1 else weight[:token_id].mean(0)
    return token_id


def _encode_images(pipe, images, device):
    import numpy as np
    import torch

    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    x = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB").resize((size, size)), dtype=np.float32))
                     for im in images]).permute(0, 3, 1, 2) / 127.5 - 1.0
    vae = pipe.vae
    with torch.no_grad():
        latents = torch.cat([vae.encode(x[i:i + 8].to(device, vae.dtype)).latent_dist.mean
                             for i in range(0, len(x), 8)]).float()
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    return (latents - shift) * float(vae.config.scaling_factor)


@contextmanager
def frozen(pipe):
    """The UNet, text encoder and VAE frozen and in eval mode while an attack optimises its input; each flag and
    mode is put back afterwards, since the pipeline may be in use elsewhere (a training tab, a node graph)."""
    modules = (pipe.unet, pipe.text_encoder, pipe.vae)
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


def training_scheduler(pipe):
    """The DDPM forward process of the pipeline's own schedule (its betas and prediction type)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipe.scheduler.config)


def draw(gen, n_images: int, shape, batch: int, timesteps: int):
    """(image indices, noise, timesteps) of one batch, t uniform in [0, timesteps)."""
    import torch

    return (torch.randint(0, n_images, (batch,), generator=gen), torch.randn((batch, *shape), generator=gen),
            torch.randint(0, timesteps, (batch,), generator=gen))


def denoising_loss(unet, sched, latents, noise, t, cond):
    """‖target − model(x_t, t, cond)‖², the target ε or v as the scheduler predicts."""
    import torch.nn.functional as F

    target = noise if sched.config.prediction_type == "epsilon" else sched.get_velocity(latents, noise, t)
    # inputs in the UNet's dtype: the latents are fp32, the UNet may be half precision on a GPU
    pred = unet(sched.add_noise(latents, noise, t).to(unet.dtype), t, cond.to(unet.dtype)).sample
    return F.mse_loss(pred.float(), target.float())


def concept_inversion(pipe, images: Sequence, prompts: Sequence[str], token: str, steps: int = 1000,
                      lr: float = 5e-3, batch: int = 4, seed: int = 0, init_word: str | None = None,
                      eval_draws: int = 32, progress=None) -> InversionResult:
    """Learn `token` on (image, prompt) pairs, the prompts holding the token (see `token_prompts`).

    The pipeline is used as it stands (its active adapter is the model under attack) and stays frozen; only
    the token's embedding vector trains, with the standard denoising loss ‖ε − ε_θ(x_t, t, c(prompt))‖².
    """
    import torch

    if len(images) != len(prompts) or not images:
        raise ValueError(f"need one prompt per image, got {len(images)} images and {len(prompts)} prompts")
    device = pipe.unet.device
    token_id = add_token(pipe, token, init_word)
    tok, te, unet = pipe.tokenizer, pipe.text_encoder, pipe.unet
    emb_layer = te.get_input_embeddings()
    vec = torch.nn.Parameter(emb_layer.weight[token_id].detach().clone().float())
    latents = _encode_images(pipe, images, device)
    ids = tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids.to(device)
    sched = training_scheduler(pipe)
    T = sched.config.num_train_timesteps

    def swap_in(module, inputs, output):  # the token's rows come from `vec`, everything else as it was
        hit = (inputs[0] == token_id).unsqueeze(-1)
        return torch.where(hit, vec.to(output.dtype), output)

    def loss_on(idx, noise, t):
        return denoising_loss(unet, sched, latents[idx], noise, t, te(ids[idx])[0])

    fixed = torch.Generator().manual_seed(seed + 1)
    draws = [draw(fixed, len(images), latents.shape[1:], batch, T) for _ in range(max(1, eval_draws // batch))]

    def eval_loss():
        with torch.no_grad():
            return float(sum(loss_on(i, n.to(device), t.to(device)).item() for i, n, t in draws) / len(draws))

    result = InversionResult(token, token_id, vec)
    with frozen(pipe):
        hook = emb_layer.register_forward_hook(swap_in)
        try:
            result.eval_loss_before = eval_loss()
            opt = torch.optim.Adam([vec], lr=lr)
            gen = torch.Generator().manual_seed(seed)
            for step in range(steps):
                idx, noise, t = draw(gen, len(images), latents.shape[1:], batch, T)
                loss = loss_on(idx, noise.to(device), t.to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                result.losses.append(loss.item())
                if (step + 1) % 10 == 0 or step + 1 == steps:
                    report(progress, ProgressEvent("attack", step + 1, steps, logs={"ci_loss": loss.item()}))
            result.eval_loss_after = eval_loss()
        finally:
            hook.remove()
    with torch.no_grad():
        emb_layer.weight[token_id] = vec.detach().to(emb_layer.weight.dtype)
    result.embedding = vec.detach().clone()
    return result
