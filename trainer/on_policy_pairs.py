"""On-policy pairs: the erasure check's images that still show the concept become new pairs.

Why: the DPO margin is met on the base model's pairs while the adapter's own samples can still show the concept
(benchmarks/RESULTS.md, "what else was tried": the training loss does not tell a seed that erased from one that did
not). An image the adapter drew and the detector still flags is where the adapter fails; with a base-model SDEdit
twin (the pairs' strength and negative prompt, a safe prompt of the same unsafe prompt) it becomes one more
pair, drawn like the others from then on: the adapter's own samples as losers, as in online or iterative DPO.
Each check draws fresh seeds, so no image is added twice.
"""
from __future__ import annotations

from dataclasses import dataclass

from .erasure_stop import CHECK_SEED
from .presets import UNSAFE_PROMPT

TWIN_ATTEMPTS = 3  # a twin that still shows the concept is redrawn at another seed, at most this often, then dropped
# Check k draws image i at CHECK_SEED + k·SEEDS_APART + i, its twin at that + TWIN_SEED + attempt·CHECK_IMAGES: no
# seed is used twice in a run, and none is one the evaluation or the previews use.
SEEDS_APART = 1000
TWIN_SEED = 500


@dataclass
class OnPolicyPairs:
    detector: object  # detectors.Detector: the erasure check's
    sources: list[list[int]]  # per check image: the pairs with its unsafe prompt (safe prompts, conditioning rows)
    unsafe_prompts: list[str]  # per check image
    safe_prompts: list[str]  # per pair record
    strength: float  # the SDEdit strength of the dataset's twins
    twin_negative: str  # and their negative prompt (presets.UNSAFE_PROMPT stands for the image's unsafe prompt)
    sample_steps: int
    guidance: float

    def seed(self, check_index: int) -> int:
        return CHECK_SEED + SEEDS_APART * check_index

    def make(self, pipe, denoiser, family, resolution: int, images, flagged, seed: int, batch: int) -> dict | None:
        """Twins of the flagged images from the base model (adapter off), gated by the detector; the new pairs'
        posterior latents on the CPU (every process of a multi-GPU run adds the same), or None when none."""
        import torch

        from .latent_cache import posterior
        from .lora import adapters_disabled
        from .pair_dataset import image_tensor
        from .runtime import quiet_diffusers

        todo = [i for i, f in enumerate(flagged) if f]
        made: dict[int, tuple[int, object]] = {}  # check image -> (source pair, twin)
        edit = family.img2img(pipe) if todo else None
        for attempt in range(TWIN_ATTEMPTS):
            if not todo:
                break
            source = {i: self.sources[i][(i + attempt) % len(self.sources[i])] for i in todo}
            twins = []
            for lo in range(0, len(todo), batch):
                chunk = todo[lo:lo + batch]
                with adapters_disabled(denoiser), quiet_diffusers(), torch.no_grad():
                    twins += edit(prompt=[self.safe_prompts[source[i]] for i in chunk],
                                  negative_prompt=[self.twin_negative.replace(UNSAFE_PROMPT, self.unsafe_prompts[i])
                                                   for i in chunk],
                                  image=[images[i] for i in chunk], strength=self.strength,
                                  generator=[torch.Generator().manual_seed(seed + TWIN_SEED + attempt * len(images) + i)
                                             for i in chunk],
                                  num_inference_steps=self.sample_steps, guidance_scale=self.guidance).images
            scores = self.detector.scores(twins)
            for i, twin, score in zip(todo, twins, scores):
                if score < self.detector.threshold:
                    made[i] = (source[i], twin)
            todo = [i for i in todo if i not in made]
        if not made:
            return None
        order = sorted(made)
        grown = {"source": torch.tensor([made[i][0] for i in order])}
        device = next(pipe.vae.parameters()).device
        for which, pictures in (("unsafe", [images[i] for i in order]), ("safe", [made[i][1] for i in order])):
            parts = [posterior(pipe.vae, torch.stack([image_tensor(im.convert("RGB"), resolution)
                                                      for im in pictures[lo:lo + batch]]), device)
                     for lo in range(0, len(pictures), batch)]  # as many at a time as the check draws
            grown[f"{which}_mean"] = torch.cat([mean for mean, _ in parts]).cpu()
            grown[f"{which}_std"] = torch.cat([std for _, std in parts]).cpu()
        return grown


def on_policy_pairs(cfg, check, records) -> OnPolicyPairs | None:
    """What a TrainConfig asks for (None: the pairs stay those of the dataset), for the check's images."""
    from .pairs import PairConfig, made_with

    if not cfg.on_policy_pairs or check is None:
        return None
    negative = made_with(cfg.pairs).get("twin_negative", UNSAFE_PROMPT)  # the dataset's twins' own
    by_prompt: dict[str, list[int]] = {}
    for j, r in enumerate(records):
        by_prompt.setdefault(r.unsafe_prompt, []).append(j)
    return OnPolicyPairs(check.detector, [by_prompt[p] for p in check.prompts], list(check.prompts),
                         [r.safe_prompt for r in records], records[0].strength or PairConfig.strength,  # older records: the default
                         negative if isinstance(negative, str) else UNSAFE_PROMPT, check.sample_steps, check.guidance)
