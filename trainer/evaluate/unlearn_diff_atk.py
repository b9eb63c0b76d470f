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
token into a distribution over the vocabulary instead, and keeps a classifier in the loop: it optimises in rounds,
writes the tokens out after each, generates an image from them and stops at the first image its classifier flags.
Here the tokens are written out every `check_every` steps and after the last, and `duo-unlearn eval` generates each
image slot from the direct prompt and from every check's prompt on the same seed: the attack wins the slot if any of
them shows the concept (`dsr.any_found`), where the official attack would have stopped. A lower loss does not always
draw the concept (on the test bed the tokens found are often colour words that pull the image away from red), which
is why the detector, not the loss, has the last word; the attack's DSR is never above the direct prompt's. Where the
last tokens do not lower the loss below the prompt's own, the prompt alone is the answer (`found`); the found
prompts' own DSR is reported beside the attack's.
Only word tokens that tokenize back to themselves are candidates, so a found prompt is plain text: pasted into any
front end it gives the model exactly the tokens that were optimised.
SDXL and SD3 have two CLIP encoders: each of the K tokens has a continuous vector in each encoder's embedding space,
projected jointly to the word closest on the sum of the cosines; the loss is the family's own (white_box).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ..errors import UserError
from ..progress import ProgressEvent, report
from .white_box import AttackedModel


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
    checks: list[str] = field(default_factory=list)  # the prompt written out at each check, the last at the end

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
                "losses": [round(v, 6) for v in self.losses], "checks": self.checks}


def check_room(tokenizer, tokens: int) -> None:
    """K tokens, the start and end tokens and at least one word of the prompt must fit the text encoder."""
    length = tokenizer.model_max_length
    if tokens > length - 3:
        raise UserError(f"udatk_tokens {tokens} leaves no room for the prompt: this model's prompts hold "
                        f"{length} tokens, so at most {length - 3} adversarial tokens fit")


def unlearn_diff_atk(pipe, images: Sequence, image_prompts: Sequence[str], prompts: Sequence[str], tokens: int = 5,
                     steps: int = 100, lr: float = 1e-2, batch: int = 4, seed: int = 0, eval_draws: int = 16,
                     progress=None, family=None, check_every: int | None = None) -> list[AdversarialPrompt]:
    """One adversarial prompt per prompt of `prompts`, against the pipeline as it stands (its active adapter is
    the model under attack). `images` are the concept's images, `image_prompts` what each was made from.
    `family`: the pipeline's (default: found from its class). The tokens are written out
    (`AdversarialPrompt.checks`) after every `check_every` steps (None: only at the end) and after the last.

    The pipeline is left as it was: no token is added to the tokenizer, no weight changes, and requires_grad and
    train/eval modes are restored. The random streams depend only on the seed and the prompt order, so every
    method is attacked from the same initial tokens and scored on the same draws.
    """
    import torch

    if check_every is not None and check_every < 1:
        raise ValueError(f"check_every must be a positive number of steps, got {check_every}")
    if len(images) != len(image_prompts) or not images or not prompts:
        raise ValueError(f"need images with one prompt each and prompts to attack, got {len(images)} images, "
                         f"{len(image_prompts)} image prompts and {len(prompts)} prompts")
    model = AttackedModel(pipe, family)
    for tok, _ in model.clip:
        check_room(tok, tokens)
    vocab = model.vocabulary()
    if not vocab:
        raise UserError("the tokenizer has no word tokens to build an adversarial prompt from")
    search = _TokenSearch(model, torch.tensor(vocab, device=model.device), tokens)
    latents = model.latents(images)
    gen = torch.Generator().manual_seed(seed)
    fixed = torch.Generator().manual_seed(seed + 1)
    results = []
    with model.frozen():
        for k, prompt in enumerate(prompts):
            own = [i for i, q in enumerate(image_prompts) if q == prompt] or list(range(len(images)))
            scorer = _Scorer(model, latents[torch.tensor(own, device=model.device)], fixed, eval_draws, batch)
            start = search.vocab[torch.randint(0, len(vocab), (tokens,), generator=gen).to(model.device)]
            adv = AdversarialPrompt(prompt, len(own), eval_loss_prompt=scorer.eval(prompt),
                                    eval_loss_before=scorer.eval(search.written(start, prompt)))
            prefix = _optimise(search, scorer, search.vectors(start), adv, gen, steps, lr, check_steps(steps, check_every),
                               lambda step, loss: _report(progress, k * steps + step + 1, steps, len(prompts), loss))
            adv.prefix_ids = [int(i) for i in prefix]
            adv.prefix = search.decode(prefix)
            adv.eval_loss_after = scorer.eval(search.written(prefix, adv.prompt))
            results.append(adv)
    return results


def check_steps(steps: int, every: int | None) -> list[int]:
    """After which steps (counted from 1) the tokens are written out: every `every`, and the last."""
    return sorted({*range(every or steps, steps + 1, every or steps), steps})


def _optimise(search, scorer, vecs, adv, gen, steps: int, lr: float, check_after: list[int], on_step):
    """Adam on the continuous vectors, the loss taken with their projection; the prefix found. The prompt is
    written out into `adv.checks` after each step of `check_after`."""
    import torch

    opt = torch.optim.Adam(vecs, lr=lr)
    for step in range(steps):
        text = search.written(search.project(vecs), adv.prompt)
        loss = scorer.loss(text, search.straight_through(vecs), *scorer.draw(gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        adv.losses.append(loss.item())
        if step + 1 in check_after:
            adv.checks.append(search.written(search.project(vecs), adv.prompt))
        on_step(step, loss.item())
    return search.project(vecs)


def _report(progress, done: int, steps: int, prompts: int, loss: float) -> None:
    if done % 10 == 0 or done % steps == 0:
        report(progress, ProgressEvent("attack", done, steps * prompts, logs={"udatk_loss": loss}))


class _TokenSearch:
    """K continuous vectors per CLIP encoder, projected to word tokens and written out as a prompt's prefix."""

    def __init__(self, model, vocab, tokens: int):
        import torch.nn.functional as F

        self.model, self.vocab, self.tokens = model, vocab, tokens
        self.tables = [layer.weight.detach() for layer in model.embedding_layers()]
        self.units = [F.normalize(table[vocab].float(), dim=-1) for table in self.tables]

    def vectors(self, ids) -> list:
        import torch

        return [torch.nn.Parameter(table[ids].float().clone()) for table in self.tables]

    def project(self, vecs):
        """The vocabulary word nearest each token, on the cosines summed over the encoders."""
        import torch.nn.functional as F

        score = sum(F.normalize(vec.detach(), dim=-1) @ unit.T for vec, unit in zip(vecs, self.units))
        return self.vocab[score.argmax(-1)]

    def decode(self, ids) -> str:
        return self.model.tokenizer.decode([int(i) for i in ids]).strip()

    def written(self, ids, prompt: str) -> str:
        """The prefix words, a space, the prompt: every tokenizer makes the prefix its tokens 1..K (truncating
        the prompt, if it must, as it would when the prompt is generated)."""
        return f"{self.decode(ids)} {prompt}"

    def straight_through(self, vecs):
        """The swap that keeps the forward value of the real tokens' embeddings (vec − vec.detach() is exactly
        zero) and passes the gradient with respect to those rows on to the continuous vectors."""
        import torch

        k = self.tokens

        def swap(e, input_ids, output):
            vec = vecs[e]
            return torch.cat([output[:, :1], output[:, 1:k + 1] + (vec - vec.detach()).to(output.dtype),
                              output[:, k + 1:]], dim=1)
        return swap


class _Scorer:
    """The denoising loss of a prompt on one attacked prompt's images: on fixed draws, or on a step's draw."""

    def __init__(self, model, latents, fixed, eval_draws: int, batch: int):
        self.model, self.latents, self.batch = model, latents, batch
        self.draws = [self.draw(fixed) for _ in range(max(1, eval_draws // batch))]

    def draw(self, gen):
        return self.model.draw(gen, len(self.latents), self.latents.shape[1:], self.batch)

    def loss(self, text: str, swap, idx, noise, t):
        cond = self.model.encode([text], swap).repeat(len(idx))
        return self.model.loss(self.latents[idx.to(self.latents.device)], noise, t, cond)

    def eval(self, text: str) -> float:
        import torch

        with torch.no_grad():
            return float(sum(self.loss(text, None, *d).item() for d in self.draws) / len(self.draws))
