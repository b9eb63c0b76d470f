"""Stop training once the concept is gone from the adapter's own samples, instead of after a fixed step count.

Why: with a retain term the step at which the concept goes depends on the training seed (benchmarks/RESULTS.md,
"what else was tried"): on the test bed one seed has red gone at 300 steps, another not before ~900, a third not
even then, and the first seed at 600 steps starts changing backgrounds. The DPO loss cannot tell them apart (its
margin is met on every seed), so no fixed step count suits every seed; the detector on samples can. `steps` becomes
the most a run may take; every `stop_every` steps the adapter draws CHECK_IMAGES images of the pairs' unsafe
prompts, and training stops when at least `stop_erased` of them no longer show the concept. A run that never gets
there says so at the end (some seeds do not, at any step count measured: try another seed).
"""
from __future__ import annotations

from dataclasses import dataclass

# 12 were too few on the test bed: at seed 0, step 300, they read 83% erased where 18 held-out images read 100%,
# so the run went on and lost orange (benchmarks/RESULTS.md, "what else was tried"). 24 cost ~15 s per check on
# the test bed on one CPU thread, and seconds on a GPU.
CHECK_IMAGES = 24
# Far from the seeds `duo-unlearn eval` and the previews use (0 upwards), so the check never looks at the images
# a run is later judged on.
CHECK_SEED = 1_000_000
# On an accelerator the images are drawn 4 at a time: with guidance that is 8 denoiser rows, as many as a training
# step's 4 pairs, so a check never needs more memory than training does. The CPU draws all at once (memory is not
# the limit there, and the test-bed figures in RESULTS.md were measured so).
DEVICE_BATCH = 4


@dataclass
class ErasureCheck:
    detector: object  # detectors.Detector
    prompts: list[str]  # CHECK_IMAGES prompts: the unsafe prompts, cycled
    every: int
    target: float  # erased fraction that stops training
    sample_steps: int
    guidance: float

    def due(self, done: int, max_steps: int) -> bool:
        """Every `every` steps, and at the last step: the user learns how far the adapter they get erased."""
        return done % self.every == 0 or done == max_steps

    def erased(self, pipe, denoiser, family, rt, seed: int = CHECK_SEED, grow=None) -> float:
        """Fraction of the check images in which the detector no longer finds the concept (adapter on).

        grow(images, flagged, batch), when given, is handed the images and which of them still show the concept
        while the model is placed for sampling (on_policy_pairs.py)."""
        from .evaluate.run import generate
        from .runtime import sampling_mid_training

        with sampling_mid_training(pipe, rt, denoiser, family.text_modules(pipe)):
            batch = len(self.prompts) if rt.device.type == "cpu" else DEVICE_BATCH
            with rt.autocast():  # image i has seed `seed` + i in any batch
                images = generate(pipe, self.prompts, 1, seed, self.sample_steps, self.guidance, batch=batch)
            flagged = [score >= self.detector.threshold for score in self.detector.scores(images)]
            if grow is not None:
                with rt.autocast():
                    grow(images, flagged, batch)
        return 1.0 - sum(flagged) / len(images)


def planned_steps(facts: dict):
    """The steps a run was asked for, from an adapter's duo.* facts: a run that may stop early records both."""
    return facts.get("max_steps", facts.get("steps"))


def same_stop_rule(facts: dict, cfg) -> bool:
    """Whether an adapter's facts record the erasure check a TrainConfig asks for (or, like it, none), with or
    without on-policy pairs as it asks."""
    if not cfg.stop_every:
        return not facts.get("stop_every")
    return (facts.get("stop_every") == cfg.stop_every and facts.get("stop_erased") == cfg.stop_erased
            and bool(facts.get("on_policy_pairs")) == cfg.on_policy_pairs)


def erasure_check(cfg, records) -> ErasureCheck | None:
    """The check a TrainConfig asks for (None: train all `steps`), its prompts taken from the pair records."""
    from .detectors import make_detector
    from .errors import UserError

    if not cfg.stop_every:
        return None
    detector = make_detector(cfg.stop_detector)  # cfg.validate() refused "none" already
    unsafe = list(dict.fromkeys(r.unsafe_prompt for r in records if r.unsafe_prompt))
    if not unsafe:
        raise UserError(f"--stop-every samples the pairs' unsafe prompts, and {cfg.pairs} records none")
    prompts = [unsafe[i % len(unsafe)] for i in range(CHECK_IMAGES)]
    return ErasureCheck(detector, prompts, cfg.stop_every, cfg.stop_erased, cfg.preview_steps, cfg.preview_guidance)
