"""An UnlearnDiffAtk-style attack (Zhang et al., ECCV 2024, "To Generate or Not? Safety-Driven Unlearned
Diffusion Models Are Still Easy To Generate Unsafe Images ... For Now"): adversarial prompt tokens found with the
unlearned model's own denoising loss, the diffusion model serving as its own concept classifier.

For each direct prompt, K tokens are prepended and chosen so that the model under attack (its adapter on, frozen)
denoises images of the concept well when told "<K tokens> <prompt>":

    min over the tokens of  E_{x0, ε, t} ‖ε − ε_θ(x_t, t, c(<K tokens> <prompt>))‖²   (v in place of ε for v models)

x0 the concept's images (for a prompt, those generated from it where there are any, as the paper pairs each prompt
with its own image), t uniform. The tokens live in continuous embedding space and are projected, in every forward
pass, to the nearest (cosine) word token of the vocabulary; the loss is computed with those real tokens and its
gradient passes straight through to the continuous vectors (PEZ, Wen et al. 2023). The official code relaxes each
token into a distribution over the vocabulary instead, and stops at the first image a classifier flags; here no
classifier is in the loop, and DSR is measured afterwards by generating the prompts like every other attack's.
The paper attacks only the prompts the model already refuses; the loss stands in for its classifier here: where
the tokens found do not lower the loss below the prompt's own, the prompt alone is the attack's answer (the
attacker keeps whichever works better, so the attack is never a handicap to the direct prompt).
Only word tokens that tokenize back to themselves are candidates, so a found prompt is plain text: pasted into any
front end it gives the model exactly the tokens that were optimised.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ..errors import UserError
from ..progress import ProgressEvent, report
from .concept_inversion import _encode_images, denoising_loss, draw, frozen, training_scheduler
from .ring_a_bell import word_vocabulary


@dataclass
class AdversarialPrompt:
    prompt: str  # the direct prompt attacked
    images: int  # target images it was optimised on
    prefix: str = ""  # the tokens found, written out
    prefix_ids: list[int] = field(default_factory=list)
    eval_loss_prompt: float = 0.0  # the loss on fixed (image, noise, t) draws, the direct prompt alone
    eval_loss_before: float = 0.0  # ... with the initial (random) tokens prepended
    eval_loss_after: float = 0.0  # ... with the tokens found
    losses: list[float] = field(default_factory=list)

    @property
    def kept(self) -> bool:
        """Whether the tokens found beat the prompt alone (else the prompt alone is the answer)."""
        return self.eval_loss_after < self.eval_loss_prompt

    @property
    def found(self) -> str:
        """The adversarial prompt: the tokens found, a space, the direct prompt; or the prompt alone."""
        return " ".join(s for s in (self.prefix, self.prompt) if s) if self.kept else self.prompt

    def as_dict(self) -> dict:
        return {"prompt": self.prompt, "found": self.found, "prefix": self.prefix, "prefix_kept": self.kept,
                "images": self.images, "eval_loss_prompt": self.eval_loss_prompt,
                "eval_loss_before": self.eval_loss_before, "eval_loss_after": self.eval_loss_after,
                "losses": [round(v, 6) for v in self.losses]}


def check_room(tokenizer, tokens: int) -> None:
    """K tokens, the start and end tokens and at least one word of the prompt must fit the text encoder."""
    length = tokenizer.model_max_length
    if tokens > length - 3:
        raise UserError(f"udatk_tokens {tokens} leaves no room for the prompt: this model's prompts hold "
                        f"{length} tokens, so at most {length - 3} adversarial tokens fit")


def unlearn_diff_atk(pipe, images: Sequence, image_prompts: Sequence[str], prompts: Sequence[str], tokens: int = 5,
                     steps: int = 100, lr: float = 1e-2, batch: int = 4, seed: int = 0, eval_draws: int = 16,
                     progress=None) -> list[AdversarialPrompt]:
    """One adversarial prompt per prompt of `prompts`, against the pipeline as it stands (its active adapter is
    the model under attack). `images` are the concept's images, `image_prompts` what each was made from.

    The pipeline is left as it was: no token is added to the tokenizer, no weight changes, and requires_grad and
    train/eval modes are restored. The random streams depend only on the seed and the prompt order, so every
    method is attacked from the same initial tokens and scored on the same draws.
    """
    import torch
    import torch.nn.functional as F

    if len(images) != len(image_prompts) or not images or not prompts:
        raise ValueError(f"need images with one prompt each and prompts to attack, got {len(images)} images, "
                         f"{len(image_prompts)} image prompts and {len(prompts)} prompts")
    tok, te, unet = pipe.tokenizer, pipe.text_encoder, pipe.unet
    check_room(tok, tokens)
    vocab = word_vocabulary(tok)
    if not vocab:
        raise UserError("the tokenizer has no word tokens to build an adversarial prompt from")
    device = unet.device
    emb_layer = te.get_input_embeddings()
    vocab_t = torch.tensor(vocab, device=device)
    unit = F.normalize(emb_layer.weight.detach()[vocab_t].float(), dim=-1)
    latents = _encode_images(pipe, images, device)
    sched = training_scheduler(pipe)
    T = sched.config.num_train_timesteps
    L = tok.model_max_length
    # the prompt tokenized K short of the full length, so the prefix slots in after the start token and the
    # result is exactly what the tokenizer makes of the written-out prompt (truncation included)
    short = tok(list(prompts), padding="max_length", max_length=L - tokens, truncation=True,
                return_tensors="pt").input_ids.to(device)
    plain = tok(list(prompts), padding="max_length", max_length=L, truncation=True,
                return_tensors="pt").input_ids.to(device)
    live: list = []  # the continuous vectors of the step being taken; empty outside the training steps

    def straight_through(module, inputs, output):
        # the forward value stays the real tokens' embedding (vec − vec.detach() is exactly zero); the gradient
        # with respect to those rows reaches the continuous vectors
        if not live:
            return output
        vec = live[0]
        return torch.cat([output[:, :1], output[:, 1:tokens + 1] + (vec - vec.detach()).to(output.dtype),
                          output[:, tokens + 1:]], dim=1)

    def project(vec):
        return vocab_t[(F.normalize(vec.detach(), dim=-1) @ unit.T).argmax(-1)]

    def with_prefix(k, prefix):
        return torch.cat([short[k, :1], prefix, short[k, 1:]])[None]

    def loss_on(ids, own, idx, noise, t):
        cond = te(ids)[0].expand(len(idx), -1, -1)
        return denoising_loss(unet, sched, latents[own[idx]], noise.to(device), t.to(device), cond)

    gen = torch.Generator().manual_seed(seed)
    fixed = torch.Generator().manual_seed(seed + 1)
    results = []
    with frozen(pipe):
        hook = emb_layer.register_forward_hook(straight_through)
        try:
            for k, prompt in enumerate(prompts):
                own = [i for i, q in enumerate(image_prompts) if q == prompt] or list(range(len(images)))
                own = torch.tensor(own, device=device)
                draws = [draw(fixed, len(own), latents.shape[1:], batch, T)
                         for _ in range(max(1, eval_draws // batch))]

                def eval_loss(ids):
                    with torch.no_grad():
                        return float(sum(loss_on(ids, own, *d).item() for d in draws) / len(draws))

                start = vocab_t[torch.randint(0, len(vocab), (tokens,), generator=gen).to(device)]
                vec = torch.nn.Parameter(emb_layer.weight.detach()[start].float().clone())
                opt = torch.optim.Adam([vec], lr=lr)
                adv = AdversarialPrompt(prompt, len(own), eval_loss_prompt=eval_loss(plain[k:k + 1]),
                                        eval_loss_before=eval_loss(with_prefix(k, start)))
                for step in range(steps):
                    ids = with_prefix(k, project(vec))
                    live.append(vec)
                    try:
                        loss = loss_on(ids, own, *draw(gen, len(own), latents.shape[1:], batch, T))
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                    finally:
                        live.clear()
                    opt.step()
                    adv.losses.append(loss.item())
                    done = k * steps + step + 1
                    if done % 10 == 0 or step + 1 == steps:
                        report(progress, ProgressEvent("attack", done, steps * len(prompts),
                                                       logs={"udatk_loss": loss.item()}))
                prefix = project(vec)
                adv.prefix_ids = [int(i) for i in prefix]
                adv.prefix = tok.decode(adv.prefix_ids).strip()
                adv.eval_loss_after = eval_loss(with_prefix(k, prefix))
                results.append(adv)
        finally:
            hook.remove()
    return results
