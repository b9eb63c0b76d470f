"""Concept Inversion (Pham et al., 2024): a white-box attack on an unlearned model.

A new token's input embedding is learnt by textual inversion on images of the concept, with the unlearned model
(UNet + adapter, text encoder, VAE) frozen; if the concept is only hidden rather than gone, the token brings it
back. Defaults follow the paper's appendix: Adam, lr 5e-3, batch 4; the number of steps is a setting.
"""
from __future__ import annotations

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


def concept_inversion(pipe, images: Sequence, prompts: Sequence[str], token: str, steps: int = 1000,
                      lr: float = 5e-3, batch: int = 4, seed: int = 0, init_word: str | None = None,
                      eval_draws: int = 32, progress=None) -> InversionResult:
    """Learn `token` on (image, prompt) pairs, the prompts holding the token (see `token_prompts`).

    The pipeline is used as it stands (its active adapter is the model under attack) and stays frozen; only
    the token's embedding vector trains, with the standard denoising loss ‖ε − ε_θ(x_t, t, c(prompt))‖².
    """
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

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
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    T = sched.config.num_train_timesteps

    def swap_in(module, inputs, output):  # the token's rows come from `vec`, everything else as it was
        hit = (inputs[0] == token_id).unsqueeze(-1)
        return torch.where(hit, vec.to(output.dtype), output)

    frozen = [(p, p.requires_grad) for m in (unet, te, pipe.vae) for p in m.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    was_training = unet.training, te.training
    unet.eval()
    te.eval()
    hook = emb_layer.register_forward_hook(swap_in)

    def loss_on(idx, noise, t):
        target = noise if sched.config.prediction_type == "epsilon" else sched.get_velocity(latents[idx], noise, t)
        cond = te(ids[idx])[0]
        pred = unet(sched.add_noise(latents[idx], noise, t), t, cond).sample
        return F.mse_loss(pred.float(), target.float())

    fixed = torch.Generator().manual_seed(seed + 1)
    draws = [(torch.randint(0, len(images), (batch,), generator=fixed),
              torch.randn((batch, *latents.shape[1:]), generator=fixed),
              torch.randint(0, T, (batch,), generator=fixed)) for _ in range(max(1, eval_draws // batch))]

    def eval_loss():
        with torch.no_grad():
            return float(sum(loss_on(i, n.to(device), t.to(device)).item() for i, n, t in draws) / len(draws))

    result = InversionResult(token, token_id, vec)
    try:
        result.eval_loss_before = eval_loss()
        opt = torch.optim.Adam([vec], lr=lr)
        gen = torch.Generator().manual_seed(seed)
        for step in range(steps):
            idx = torch.randint(0, len(images), (batch,), generator=gen)
            noise = torch.randn((batch, *latents.shape[1:]), generator=gen).to(device)
            t = torch.randint(0, T, (batch,), generator=gen).to(device)
            loss = loss_on(idx, noise, t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            result.losses.append(loss.item())
            if (step + 1) % 10 == 0 or step + 1 == steps:
                report(progress, ProgressEvent("attack", step + 1, steps, logs={"ci_loss": loss.item()}))
        result.eval_loss_after = eval_loss()
    finally:
        hook.remove()
        for p, flag in frozen:
            p.requires_grad_(flag)
        unet.train(was_training[0])
        te.train(was_training[1])
    with torch.no_grad():
        emb_layer.weight[token_id] = vec.detach().to(emb_layer.weight.dtype)
    result.embedding = vec.detach().clone()
    return result
