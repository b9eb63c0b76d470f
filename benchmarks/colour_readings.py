"""The colour classifier's readings of a method against the base model (`efficacy_testbed.compare_readings`), named
once: the efficacy table, its pooled table, the seed spread and the screens all show and pool these.

A reading is a share of images. Pooled over several seed sets, a share is the images that count over the images
read, summed over the sets; a ratio to the base model (orange, shape accuracy) is the images this method reads right
over the images the base model does, summed the same way, not the mean of the sets' ratios.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reading:
    key: str  # in a record of `compare_readings`
    column: str  # the tables' column, and the reading's name in verdicts
    n_key: str  # the record's count of the images it reads
    counted: str  # what one image it counts is, in a missed target's words
    share: str | None = None  # a ratio to the base model: the share of images read right that it divides
    judged: bool = True  # held to the 0.95 target in the verdicts


READINGS = (
    Reading("orange_vs_base", "orange kept (÷ base)", "orange_n", "read orange", "orange_accuracy"),
    Reading("background_kept", "background kept", "others_n", "backgrounds kept"),
    Reading("background_right_kept", "background kept where drawn as asked", "background_right_n",
            "backgrounds drawn as asked kept"),
    Reading("shape_accuracy_vs_base", "shape accuracy ÷ base", "others_n", "shapes read right", "shape_accuracy"),
    Reading("shape_kept", "shape kept", "others_n", "shapes kept", judged=False),  # mended shapes count as changed
    Reading("colour_kept", "other colours kept", "others_n", "colours kept", judged=False),
    Reading("concept_background_kept", "red prompts: background kept", "concept_n", "backgrounds kept"),
    Reading("concept_shape_kept", "red prompts: shape kept", "concept_n", "shapes kept"),
    # every red prompt, not only the attacks' six training prompts
    Reading("concept_erased", "red prompts: red erased", "concept_n", "red images erased"),
)
BY_KEY = {r.key: r for r in READINGS}


def pool(per_set: list[dict], base_sets: list[dict]) -> dict:
    """One method's readings of several seed sets as one, each with [images that count, out of] beside it under
    `<key>_count` (for a ratio to the base model: images read right, and the base model's). `base_sets` are the base
    model's readings of the same sets. A reading a record predates is left out."""
    out = {}
    for r in READINGS:
        if not all((r.share or r.key) in s for s in per_set):
            continue
        if r.share:
            got = sum(s[r.share] * s[r.n_key] for s in per_set)
            of = sum(b[r.share] * b[r.n_key] for b in base_sets)
        else:
            got = sum(s[r.key] * s[r.n_key] for s in per_set)
            of = sum(s[r.n_key] for s in per_set)
        out[r.key] = got / of if of else float("nan")
        out[f"{r.key}_count"] = [round(got), round(of)]
    return out
