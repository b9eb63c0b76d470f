"""Concept Inversion (Pham et al., 2024): a white-box attack on an unlearned model.

A new token's input embedding is learnt by textual inversion on images of the concept, with the unlearned model
(denoiser + adapter, text encoders, VAE) frozen; if the concept is only hidden rather than gone, the token brings it
back. Defaults follow the paper's appendix: Adam, lr 5e-3, batch 4; the number of steps is a setting. Where the
family has two CLIP encoders (SDXL, SD3), the token gets a row, and a learnt vector, in each (as diffusers'
SDXL textual inversion trains both); the loss is the family's own denoising loss (white_box.AttackedModel).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ..progress import ProgressEvent, report
from .prompts import replace_words
from .white_box import AttackedModel, mse_to_target

DEFAULT_TEMPLATE = "a photo of {}"


@dataclass
class InversionResult:
    token: str
    token_id: int
    embedding: object  # 1-D tensor, now also the token's row of the (first) text encoder's input embeddings
    losses: list[float] = field(default_factory=list)
    eval_loss_before: float = 0.0  # the loss on fixed (image, noise, t) draws, at the initial embedding
    eval_loss_after: float = 0.0
    embeddings: list = field(default_factory=list)  # one per CLIP encoder; embedding is the first

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


def add_token(tokenizer, encoder, token: str, init_word: str | None = None) -> int:
    """Add `token` to the tokenizer and a row for it to the text encoder; the row starts as `init_word`'s
    embedding when that is one token, else as the mean embedding."""
    import torch

    if token not in tokenizer.get_vocab():
        tokenizer.add_tokens([token])
    if encoder.get_input_embeddings().num_embeddings < len(tokenizer):  # also when a shared tokenizer has it
        encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the row is set just below
    token_id = tokenizer.convert_tokens_to_ids(token)
    weight = encoder.get_input_embeddings().weight
    init_ids = tokenizer(init_word, add_special_tokens=False).input_ids if init_word else []
    with torch.no_grad():
        weight[token_id] = weight[init_ids[0]] if len(init_ids) == 1 else weight[:token_id].mean(0)
    return token_id


def denoising_loss(unet, sched, latents, noise, t, cond):
    """SD 1.x's attack loss spelt with a DDPM scheduler and one conditioning tensor: ‖target − unet(x_t)‖², the
    target ε or v as the scheduler predicts. The attacks call the family's form, AttackedModel.loss."""
    from ..families import DDPMProcess

    return mse_to_target(DDPMProcess(sched.config), lambda x: unet(x, t, cond.to(unet.dtype)).sample,
                         latents, noise, t, unet.dtype)


def concept_inversion(pipe, images: Sequence, prompts: Sequence[str], token: str, steps: int = 1000,
                      lr: float = 5e-3, batch: int = 4, seed: int = 0, init_word: str | None = None,
                      eval_draws: int = 32, progress=None, family=None) -> InversionResult:
    """Learn `token` on (image, prompt) pairs, the prompts holding the token (see `token_prompts`).

    The pipeline is used as it stands (its active adapter is the model under attack) and stays frozen; only
    the token's embedding vectors train, with the family's denoising loss, e.g. ‖ε − ε_θ(x_t, t, c(prompt))‖².
    `family`: the pipeline's (default: found from its class).
    """
    import torch

    if len(images) != len(prompts) or not images:
        raise ValueError(f"need one prompt per image, got {len(images)} images and {len(prompts)} prompts")
    model = AttackedModel(pipe, family)
    token_ids = [add_token(tok, encoder, token, init_word) for tok, encoder in model.clip]
    layers = model.embedding_layers()
    vecs = [torch.nn.Parameter(layer.weight[i].detach().clone().float()) for layer, i in zip(layers, token_ids)]
    latents = model.latents(images)

    def swap_in(k, input_ids, output):  # the token's rows come from the vectors, everything else as it was
        hit = (input_ids == token_ids[k]).unsqueeze(-1)
        return torch.where(hit, vecs[k].to(output.dtype), output)

    def loss_on(idx, noise, t):
        cond = model.encode([prompts[i] for i in idx.tolist()], swap_in)
        return model.loss(latents[idx], noise, t, cond)

    def draw(gen):
        return model.draw(gen, len(images), latents.shape[1:], batch)

    fixed = torch.Generator().manual_seed(seed + 1)
    draws = [draw(fixed) for _ in range(max(1, eval_draws // batch))]

    def eval_loss():
        with torch.no_grad():
            return float(sum(loss_on(*d).item() for d in draws) / len(draws))

    result = InversionResult(token, token_ids[0], vecs[0])
    with model.frozen():
        result.eval_loss_before = eval_loss()
        result.losses = _optimise(vecs, loss_on, draw, steps, lr, seed, progress)
        result.eval_loss_after = eval_loss()
    with torch.no_grad():
        for layer, i, vec in zip(layers, token_ids, vecs):
            layer.weight[i] = vec.detach().to(layer.weight.dtype)
    result.embeddings = [vec.detach().clone() for vec in vecs]
    result.embedding = result.embeddings[0]
    return result


def _optimise(vecs, loss_on, draw, steps: int, lr: float, seed: int, progress) -> list[float]:
    """Adam on the token's vectors, one fresh (images, noise, t) draw a step; the losses."""
    import torch

    opt = torch.optim.Adam(vecs, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(steps):
        loss = loss_on(*draw(gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (step + 1) % 10 == 0 or step + 1 == steps:
            report(progress, ProgressEvent("attack", step + 1, steps, logs={"ci_loss": loss.item()}))
    return losses
