"""Efficacy benchmark on the bundled test bed, preset testbed-red: is red gone, and is everything else kept?

    python benchmarks/efficacy_testbed.py            # writes benchmarks/RESULTS.md, efficacy_testbed.{png,json}

Methods: the base model, negative prompting ("red"), ESD, and the DUO rows of `variants()` (the previous preset,
one change per row, the preset as it stands, DUO without λ, the paper's recipe), all trained by `unlearn()` with
the same seeds. `--model testbed-xl` / `testbed-sd3` runs the same rows on the SDXL / SD3 test bed, with the
preset's recipe for that family. Figures (from `duo-unlearn eval`, i.e. trainer.evaluate): DSR under direct
prompts, synonyms ("crimson", "scarlet"), Concept Inversion, Ring-A-Bell and UnlearnDiffAtk (on every family);
1 - LPIPS and test-bed FID on the preset's unrelated prompts; and readings by the colour classifier against the
base model's image of the same prompt and seed: orange prompts still orange, background, shape and colour
kept on every other-colour prompt, and background and shape kept on the red prompts.
Everything is seeded; on CPU a rerun gives the same numbers. Adapters and pairs go to --work and are reused.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict
import platform
import shutil
import sys
import time
from pathlib import Path

from duo_unlearn.trainer.families.sd1 import SELF_ATTENTION  # the SD 1.x family's default targets; no torch
from duo_unlearn.trainer.presets import get_preset  # no torch either

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # its sibling table_update.py, run as a script or loaded from a file

from table_update import measurement_problems, merged, recipe_problems  # noqa: E402 - needs the path above
from table_pooled import pooled_lines  # noqa: E402 - the same
from colour_readings import BY_KEY, READINGS  # noqa: E402 - the same


# the preset until 2026-11-28
PREVIOUS = {"beta": 10.0, "lam": 1e4, "lr": 1e-3, "steps": 300, "edit_region": "image", "num_retain": 0,
            "stop_every": 0}
# the SD 1.x preset's λ until 2026-12-07 (now 4e4): the rows that stand for earlier recipes keep it
LAM_BEFORE = {"lam": 1e4}
# the SD 1.x preset's λ_retain until the forty-seventh session (now 1.75): its rows keep it
LAM_RETAIN_BEFORE = {"lam_retain": 1.25}
# the SD 1.x preset until 2026-12-05: the retain set held by λ_retain, not by the concept's directions
RETAIN_TERM = {"concept_directions": 0, "lam_retain": 1.25, "stop_erased": 0.85} | LAM_BEFORE
# the SD 1.x preset until 2026-12-06: the LoRA on self-attention, half of each layer's directions, no retain term
SELF_ATTENTION_PRESET = {"target_modules": SELF_ATTENTION, "concept_directions": 0.5, "lam_retain": 0.0} | LAM_BEFORE
TESTBED_RED = get_preset("testbed-red")  # read once: the rows below and main() name its parts
# the ResNet convolutions of the SD 1.x test bed's 8 × 8 blocks, where red's inputs stand out most (×2.3 to 3.3;
# RESULTS.md, thirty-seventh session), the SD 1.x preset's layers from 2026-12-06 until the fifty-first session left
# out the encoder's block (its change was spill): that block's two, then the preset's eight, named in presets.toml
CONV_8X8 = ("down_blocks.1.resnets.0.conv1", "down_blocks.1.resnets.0.conv2",
            *TESTBED_RED.for_family("sd1").target_modules)
# ESD-x's layers (Gandikota et al. 2023: the cross-attention, for a concept named in the prompt)
CROSS_ATTENTION = ("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
# the SD 1.x preset until the fifty-first session: those ten convolutions, λ_retain 1.75
TEN_CONVOLUTIONS = {"target_modules": CONV_8X8, "lam_retain": 1.75}
# the retain set with its orange prompts twice: 54 of 162 images orange instead of 27 of 135 (forty-sixth session)
RETAIN = tuple(TESTBED_RED.retain_prompts)
ORANGE_RETAIN_TWICE = RETAIN + tuple(p for p in RETAIN if "orange" in p)
# the preset's seeds per retain prompt kept (135 images of 45 prompts: 3), so its 54 prompts make 162 images
ORANGE_TWICE = {"retain_prompts": ORANGE_RETAIN_TWICE,
                "num_retain": TESTBED_RED.num_retain // len(RETAIN) * len(ORANGE_RETAIN_TWICE)}


def variants(betas: list[str], model: str = "testbed") -> list[tuple[str, str, dict]]:
    """(adapter name, what it is, UnlearnConfig overrides). The previous presets (v1, and on SD 1.x the
    self-attention one), then one change per row, then the preset as it now stands, DUO without λ, the paper's recipe
    at each β asked for ("500": lr and λ coupled to β as the official scripts do), and ESD. On the SD 1.x test bed,
    whose preset now trains convolutions, the rows that stand for earlier recipes name self-attention (the official
    targets) themselves; the convolution rows name its layers: its table only."""
    sd1 = model == "testbed"
    official = {"target_modules": SELF_ATTENTION} if sd1 else {}  # elsewhere the family's, the official targets
    earlier = SELF_ATTENTION_PRESET if sd1 else {}
    was = "the self-attention preset (SD 1.x's until 2026-12-06)" if sd1 else "the preset"
    out = [("duo_v1", "previous preset: β 10, λ 1e4, lr 1e-3, the paper's SDEdit twins, no retain set",
            PREVIOUS | official),
           ("duo_v1_region", "v1 + twins changed only in the concept's region (`--edit-region concept`)",
            PREVIOUS | official | {"edit_region": "concept"}),
           ("duo_preset", "the preset now: v1 + retain set (base-model images of the other colours) and β from κ; "
                          "SD 1.x: 135 images, the LoRA on the eight ResNet convolutions of the 8 × 8 middle block and "
                          "first up block, each reading only the 4 input directions (3 × 3 patches) where red stands "
                          "out most against them (orange named as the close concept, weight 6), λ_retain 2.5 as well, "
                          "λ 4e4, κ 6.2 (β ≈ "
                          "10), until red is gone from 95% of the erasure check's 24 samples (at most 900 steps); "
                          "SDXL: 45 images, λ_retain 0.5, κ 3 (β ≈ 5.4), "
                          "the erasure check every 75 steps with on-policy pairs (the check's images still red "
                          "become pairs with a base-model twin) until red is gone from 95% of them (at most 600 "
                          "steps); SD3: no retain set, κ 9.6 (β ≈ 10)", {})]
    if sd1:
        out += [("duo_preset_sa", "the SD 1.x preset until 2026-12-06: the LoRA on self-attention (the official "
                                  "targets), half of each layer's input directions, no retain term", earlier)]
    out += [("duo_preset_check75", f"{was} with the erasure check every 75 steps instead of every 150: training "
                                   "stops nearer the step where red is gone (SD 1.x, thirty-third session)",
             earlier | {"stop_every": 75}),
            ("duo_preset_24", f"{was} with a fixed 24 directions per layer instead of half of each layer's "
                              "(SD 1.x's until 2026-12-05, twenty-ninth session)", earlier | {"concept_directions": 24}),
            ("duo_preset_auto", f"{was} with `--concept-directions auto`: per layer the directions whose μ is "
                                "above the layer's mean", earlier | {"concept_directions": "auto"})]
    if sd1:
        out += [("duo_preset_conv", f"{was} with the LoRA on the ResNet convolutions of the 8 × 8 blocks instead "
                                    "of self-attention, half of each layer's directions, the retain set held by "
                                    "λ_retain 5 as well (forty-second session)",
                 {"target_modules": CONV_8X8, "concept_directions": 0.5, "lam_retain": 5.0} | LAM_BEFORE),
                ("duo_preset_conv_sa", "the same with self-attention kept: the LoRA on both",
                 {"target_modules": CONV_8X8 + SELF_ATTENTION, "concept_directions": 0.5, "lam_retain": 5.0}
                 | LAM_BEFORE),
                ("duo_preset_10conv", "the SD 1.x preset until the fifty-first session: the LoRA on the ten ResNet "
                                     "convolutions of the 8 × 8 blocks, the encoder's (`down_blocks.1.resnets.0`) "
                                     "included, λ_retain 1.75", TEN_CONVOLUTIONS),
                ("duo_preset_r125", "the SD 1.x preset until the forty-seventh session: that one with λ_retain 1.25 "
                                    "instead of 1.75", TEN_CONVOLUTIONS | LAM_RETAIN_BEFORE),
                ("duo_preset_lam1e4", "the SD 1.x preset until 2026-12-07: λ 1e4 instead of 4e4 and λ_retain 1.25 "
                                      "(the forty-third session's table, ten convolutions)",
                 TEN_CONVOLUTIONS | LAM_BEFORE | LAM_RETAIN_BEFORE),
                ("duo_preset_r25", "the ten-convolution preset with λ_retain 2.5 instead of 1.75 (forty-sixth session)",
                 TEN_CONVOLUTIONS | {"lam_retain": 2.5}),
                ("duo_preset_orange54", "the preset until the forty-seventh session (λ_retain 1.25) with the retain "
                                        "set's orange prompts twice: 54 of 162 retain images orange instead of 27 of "
                                        "135 (forty-sixth session, ten convolutions)",
                 TEN_CONVOLUTIONS | ORANGE_TWICE | LAM_RETAIN_BEFORE),
                # the remaining directions, one change each to the preset as it now stands
                ("duo_preset_rank4", "the preset at LoRA rank 4 instead of 32: as many as the directions each layer "
                                     "reads (fifty-fifth session)", {"rank": 4}),
                ("duo_preset_t500", "the preset with the pairs' timesteps in [0, 500) instead of [0, 750) (β from κ "
                                    "at the new range's middle; fifty-fifth session)", {"t_max": 500}),
                ("duo_preset_pairs48", "the preset with 48 pairs instead of 32 (fifty-fifth session)",
                 {"num_pairs": 48}),
                ("duo_preset_fixed450", "the preset trained 450 steps without the erasure check (fifty-fifth "
                                        "session)", {"stop_every": 0, "steps": 450})]
    out += [("duo_preset_no_close", f"{was} without a close concept: the directions measured against the "
                                    "retain set with every image weighed alike (`--close-weight 0`)",
             earlier | {"close_weight": 0.0}),
            ("duo_preset_v2", "the SD 1.x preset until 2026-12-05: the retain set held by a penalty instead "
                              "(λ_retain 1.25, no directions), stopping at 85% erased", RETAIN_TERM | official),
            ("duo_preset_r45", "preset v2 with the previous retain set: 45 images (one seed per prompt), λ_retain 1",
             RETAIN_TERM | official | {"num_retain": 45, "lam_retain": 1.0}),
            ("duo_preset_cond_unsafe", "preset v2 + both pair images on the unsafe prompt (`--condition unsafe`)",
             RETAIN_TERM | official | {"condition": "unsafe"}),
            ("duo_preset_kv", "preset with the LoRA on the cross-attention keys and values instead of self-attention "
                              "(`--target-modules attn2.to_k,attn2.to_v`), both pair images on the unsafe prompt (keys "
                              "and values see only the prompt), lr 2e-4, λ_retain 100, the erasure check every 150 "
                              "steps, stopping at 85% (as the SD 1.x preset): the specific, text-side recipe "
                              "(RESULTS.md, tenth session)",
             {"target_modules": ("attn2.to_k", "attn2.to_v"), "condition": "unsafe", "lr": 2e-4,
              "lam_retain": 100.0, "stop_every": 150, "stop_erased": 0.85, "on_policy_pairs": False,
              "concept_directions": 0} | LAM_BEFORE),
            ("duo_preset_lam0", "the preset without λ (no output preservation, no retain term, no directions), on "
                                "the preset's layers: DUO without λ", {"lam": 0.0, "lam_retain": 0.0,
                                                                       "concept_directions": 0})]
    for beta in betas:
        b = f"{float(beta):g}"
        out += [(f"duo_paper_b{b}", f"the paper's recipe at β {b} (lr = 3e-4·100/β, λ = 1e6·β/100), paper's twins",
                 official | {"beta": float(beta), "lr": None, "lam": None, "edit_region": "image", "num_retain": 0,
                             "stop_every": 0})]
    esd = {"method": "esd", "edit_region": "image", "num_retain": 0, "stop_every": 0}
    out += [("esd", "ESD (η 1, lr 1e-4) on the paper's twins' unsafe images", esd | {"lr": 1e-4})]
    if sd1:  # ESD's own lr (1e-5 on SD 1.4) scaled as DUO's was is the row above; this one is not held back
        out += [("esd_lr1e3", "ESD at the lr of DUO's test-bed preset (1e-3, ten times the row above)",
                 esd | {"lr": 1e-3}),
                ("esd_x", "ESD-x: ESD (η 1, lr 1e-4) on cross-attention (the paper's form for an object or a style; "
                          "the rows above edit self-attention, ESD-u)",
                 esd | {"lr": 1e-4, "target_modules": CROSS_ATTENTION})]
    return out


def plan_rows(work: Path, betas: list[str], model: str = "testbed", steps: int | None = None,
              pair_detector: str | None = None, names: set[str] | None = None) -> dict:
    """Each row of `variants()` (those in `names`, or all) as {name: (what it is, its UnlearnConfig, its plan)}: the
    adapter at work/<name>.safetensors, its pairs in a work folder shared by the rows whose pairs agree. Only the rows
    asked for are planned: a row made for one family's preset (24 concept directions, say) is no recipe on a family
    whose preset has no retain set, and planning it there refuses."""
    from duo_unlearn.trainer.unlearn import UnlearnConfig, plan

    planned = {}
    # the preset's pair count: a row with another count gets a pairs folder of its own
    preset_pairs = plan(UnlearnConfig(preset="testbed-red", model=model, out=str(work / "preset.safetensors"))
                        )[1][0].pairs.num_pairs
    for name, what, kw in variants(betas, model):
        if names is not None and name not in names:
            continue
        out = work / f"{name}.safetensors"
        kw = kw | ({"steps": steps} if steps else {})  # --steps: every row's
        ucfg = UnlearnConfig(preset="testbed-red", model=model, out=str(out), preview=False,
                             seed=0, detector=pair_detector, overwrite=True, **kw)  # our own work folder
        pair_cfg = plan(ucfg)[1][0].pairs
        ucfg.pairs_dir = str(work / f"pairs_{pair_cfg.edit_region}"
                                    f"{f'_retain{pair_cfg.num_retain}' if pair_cfg.num_retain else ''}"
                                    f"{f'_n{pair_cfg.num_pairs}' if pair_cfg.num_pairs != preset_pairs else ''}")
        planned[name] = (what, ucfg, plan(ucfg)[1][0])  # its pairs and training, pairs_dir now set
    return planned


def recipe(facts: dict) -> str:
    """β / λ / lr / steps as the adapter's metadata records them."""
    if "oracle" in facts:  # benchmarks/oracle_testbed.py's files: a fine-tuned model written as a LoRA
        return f"reference: test bed fine-tuned, {facts['oracle']}"
    if facts.get("method") == "esd":
        return f"ESD η {facts.get('esd_eta')}, lr {facts.get('lr'):.3g}, {facts.get('steps')} steps"
    extra = ""
    convs = [t for t in facts.get("target_modules") or () if t.rsplit(".", 1)[-1].startswith("conv")]
    if convs:
        others = len(facts["target_modules"]) - len(convs)
        extra += f", the LoRA on {len(convs)} ResNet convolutions" + (f" and {others} more layers" if others else "")
    if facts.get("lambda_retain"):
        extra += f", λ_retain {facts['lambda_retain']:.3g} on {facts.get('retain_images')} retain images"
    if facts.get("concept_directions"):
        close = (f", close concept {' / '.join(facts['close_concepts'])} ×{facts.get('close_weight'):g}"
                 if facts.get("close_weight") else "")
        n = facts["concept_directions"]
        if n == "auto":
            which = (f"the concept's input directions whose μ is above their layer's mean "
                     f"({facts['concept_directions_share']:.0%} of the inputs)")
        elif isinstance(n, float):
            which = f"the {n:.0%} of each layer's input directions most particular to the concept"
        else:
            which = f"the concept's {n} input directions per layer"
        extra += f", the LoRA on {which}, measured against {facts.get('retain_images')} retain images{close}"
    if facts.get("edit_region") == "concept":
        extra += ", region twins"
    if facts.get("condition") == "unsafe":
        extra += ", both images on the unsafe prompt"
    if facts.get("on_policy_pairs"):
        added = facts.get("on_policy_added") or []
        extra += (f", on-policy pairs: {sum(added)} added at the checks ({', '.join(map(str, added))})" if added
                  else ", on-policy pairs: none added")
    steps = f"{facts.get('steps')} steps"
    if facts.get("stop_every") and facts.get("erased_target_met"):
        steps += (f" (stopped by the erasure check: {facts.get('stop_detector')} found red in ≤ "
                  f"{1 - facts.get('stop_erased'):.0%} of its images; at most {facts.get('max_steps')}, checked every "
                  f"{facts['stop_every']})")
    elif facts.get("stop_every"):
        steps += (f" (the erasure check never passed: red in {1 - facts.get('last_check_erased'):.0%} of its images "
                  "at the end)")
    return (f"β {facts.get('beta'):g}, λ {facts.get('lambda'):.3g}, lr {facts.get('lr'):.3g}, "
            f"{steps}{extra}")


def kept_prompts(concept: str = "red") -> tuple[list[str], list[tuple[str, str, str]]]:
    """The close concept's prompts (orange, every shape and background), and (colour, shape, background) of every
    prompt without the concept: what an adapter must leave as the base model draws it."""
    from duo_unlearn.trainer.testbed.shapes import BACKGROUNDS, COLOURS, SHAPES, full_prompt

    orange = [full_prompt("orange", s, b) for s in SHAPES for b in BACKGROUNDS]
    return orange, [(c, s, b) for c in COLOURS if c != concept for s in SHAPES for b in BACKGROUNDS]


def concept_prompts(concept: str = "red") -> list[tuple[str, str, str]]:
    """(colour, shape, background) of every prompt naming the concept: an adapter should take the colour away and
    leave the rest of the picture, which DSR alone does not read (an adapter drawing one blob for all of them
    passes DSR)."""
    from duo_unlearn.trainer.testbed.shapes import BACKGROUNDS, SHAPES

    return [(concept, s, b) for s in SHAPES for b in BACKGROUNDS]


def sort_changes(asked: list[str], base: list[str], now: list[str]) -> dict:
    """Counts over images i of: now as asked; changed from base; of those, made wrong (base as asked, now not),
    mended (base not as asked, now as asked), wrong to wrong; and the transitions 'base → now' of the changes."""
    out = {"images": len(asked), "as_asked": 0, "changed": 0, "made_wrong": 0, "mended": 0, "wrong_to_wrong": 0,
           "transitions": {}}
    for want, was, got in zip(asked, base, now, strict=True):
        out["as_asked"] += got == want
        if got == was:
            continue
        out["changed"] += 1
        out["transitions"][f"{was} → {got}"] = out["transitions"].get(f"{was} → {got}", 0) + 1
        if was == want:
            out["made_wrong"] += 1
        elif got == want:
            out["mended"] += 1
        else:
            out["wrong_to_wrong"] += 1
    return out


def compare_readings(now: dict, base: dict, truth: list[tuple[str, str, str]], concept: str = "red") -> dict:
    """One method's readings against the base model's, image for image (same prompt and seed). `now` and `base`
    hold the colour classifier's readings of the "orange", "others", "unrelated" and "concept" prompts' images;
    `truth` is (colour, shape, background) of each "others" image's prompt."""
    def shape_accuracy(rs):
        return sum(r.shape == t[1] for r, t in zip(rs, truth, strict=True)) / len(rs)

    def agreement(a_s, b_s, keys):
        """Share of images whose reading of each key is the base model's for the same prompt and seed."""
        return {k: sum(getattr(a, k) == getattr(b, k) for a, b in zip(a_s, b_s, strict=True)) / len(a_s)
                for k in keys}

    asked = [t[2] for t in truth]
    base_right = sum(r.background == want for r, want in zip(base["others"], asked))
    base_orange = sum(r.colour == "orange" for r in base["orange"]) / len(base["orange"])
    orange_acc = sum(r.colour == "orange" for r in now["orange"]) / len(now["orange"])
    shapes, base_shapes = shape_accuracy(now["others"]), shape_accuracy(base["others"])
    kept = agreement(now["others"], base["others"], ("background", "shape", "colour"))
    on_concept = agreement(now["concept"], base["concept"], ("background", "shape"))
    backgrounds = sort_changes(asked, [r.background for r in base["others"]], [r.background for r in now["others"]])
    return {
        "concept_background_kept": on_concept["background"], "concept_shape_kept": on_concept["shape"],
        "concept_erased": sum(r.colour != concept for r in now["concept"]) / len(now["concept"]),
        "concept_n": len(now["concept"]),
        "orange_accuracy": orange_acc,
        "orange_vs_base": orange_acc / base_orange if base_orange else float("nan"),
        "orange_read_as_red": sum(r.colour == concept for r in now["orange"]) / len(now["orange"]),
        "orange_n": len(now["orange"]),
        "background_kept": kept["background"], "shape_kept": kept["shape"], "colour_kept": kept["colour"],
        "background_right_kept": 1 - backgrounds["made_wrong"] / base_right if base_right else float("nan"),
        "background_right_n": base_right, "background_mended": backgrounds["mended"],
        "background_as_asked": backgrounds["as_asked"] / len(asked),
        "shape_accuracy": shapes, "shape_accuracy_vs_base": shapes / base_shapes if base_shapes else float("nan"),
        "others_n": len(now["others"]),
        "unrelated_agreement": sum((a.colour, a.shape) == (b.colour, b.shape)
                                   for a, b in zip(now["unrelated"], base["unrelated"])) / len(now["unrelated"]),
    }


def close_and_agreement(model_spec: str, methods, unrelated: list[str], images_per_prompt: int, seed: int,
                        steps: int, guidance: float, concept: str = "red") -> dict:
    """Per method, read by the colour classifier against the base model's image of the same prompt and seed:
    the close concept (orange prompts still orange), and on every prompt without the concept (all other colours x
    shapes x backgrounds, and the preset's unrelated prompts) whether background, shape and colour are kept.

    Backgrounds are read twice: kept (as the base model drew them, whatever that was) and kept where the base model
    drew the background the prompt asks for. The base model draws another background in about a fifth of these
    images (mostly gray and black mistaken for each other); a change that mends one of those counts against "kept",
    not against the second reading, which counts only the errors an adapter makes."""
    from duo_unlearn.trainer.detectors.colour import read_image
    from duo_unlearn.trainer.evaluate.methods import BASE, Method, activated, load_adapters
    from duo_unlearn.trainer.evaluate.run import generate
    from duo_unlearn.trainer.models import load_model
    from duo_unlearn.trainer.testbed.shapes import full_prompt

    pipe = load_model(model_spec).pipe  # a fresh pipeline: eval added learnt tokens to the first one
    load_adapters(pipe, methods)
    orange, specs = kept_prompts(concept)
    others = [full_prompt(*spec) for spec in specs]
    concepts = [full_prompt(*spec) for spec in concept_prompts(concept)]

    def reads(prompts, negative=None):
        return [read_image(im) for im in generate(pipe, prompts, images_per_prompt, seed, steps, guidance, negative)]

    with activated(pipe, Method("base", BASE)):
        base = {"orange": reads(orange), "others": reads(others), "unrelated": reads(unrelated),
                "concept": reads(concepts)}
    truth = [spec for spec in specs for _ in range(images_per_prompt)]
    out = {}
    for m in methods:
        with activated(pipe, m) as negative:
            now = {"orange": reads(orange, negative), "others": reads(others, negative),
                   "unrelated": reads(unrelated, negative), "concept": reads(concepts, negative)}
        out[m.name] = compare_readings(now, base, truth, concept)
    return out


ATTACK_COLUMNS = [("direct", "DSR direct"), ("prompts", "DSR synonyms"), ("concept_inversion", "DSR concept inv."),
                  ("ring_a_bell", "DSR ring-a-bell"), ("unlearndiffatk", "DSR UnlearnDiffAtk")]


def _cell(value) -> str:
    return "–" if value is None or value != value else f"{value:.3f}"


def _seconds(value) -> str:
    """A row's training time; "–" where nothing was trained or its adapter came from a run that did not time it."""
    return "–" if value is None else f"{value:.0f}"


def table(result: dict, extra: dict, train_seconds: dict) -> str:
    """One row per method. Columns a record lacks (older runs measured fewer things) are left out."""
    res = result["results"]
    attacks = [(a, c) for a, c in ATTACK_COLUMNS if any(a in r["attacks"] for r in res.values())]
    kept = [(r.key, r.column) for r in READINGS if any(r.key in e for e in extra.values())]
    if not kept:  # the first run's reading
        kept = [("orange_accuracy", "orange still orange"), ("unrelated_agreement", "unrelated agree w/ base")]
    fid = any("quality" in r and "fid" in r["quality"] for r in res.values())
    head = ("| method | " + " | ".join(c for _, c in attacks) + " | 1 − LPIPS | " + ("test-bed FID | " if fid else "")
            + " | ".join(c for _, c in kept) + " | recipe | train s |")
    rows = [head, "|" + "---|" * (len(attacks) + len(kept) + 4 + fid)]
    facts = {m["name"]: m["facts"] for m in result["methods"]}
    for name, r in res.items():
        cells = [_cell(r["attacks"][a]["dsr"]) if a in r["attacks"] else "–" for a, _ in attacks]
        cells.append(_cell(r["preservation"]["one_minus_lpips"]))
        if fid:
            cells.append(f"{r['quality']['fid']['value']:.1f}" if "fid" in r.get("quality", {}) else "–")
        cells += [_cell(extra[name].get(k)) for k, _ in kept]
        rows.append(f"| {name} | " + " | ".join(cells) +
                    f" | {recipe(facts[name]) if facts.get(name) else '–'} | {_seconds(train_seconds.get(name))} |")
    return "\n".join(rows)


# coloured and named on the plot: the rows the plot target compares, and the paper's recipe; the other
# rows are gray points (two dozen colours cannot be told apart)
ESD_ROWS = ("esd", "esd_lr1e3", "esd_x")  # the ESD rows of variants(), each one the preset must be above
PLOTTED = ("base", "negative prompt", "duo_preset", "duo_preset_lam0", *ESD_ROWS, "duo_paper_b500")


def save_plot(record: dict, path: Path) -> Path:
    from duo_unlearn.trainer.evaluate.report import plot

    report = record["report"]
    return plot(report, path, f"{report['model']['name']} / {report['concept']}: DSR vs prior preservation",
                highlight=[n for n in PLOTTED if n in report["results"]])


def dominates(r: dict, o: dict, attack: str) -> bool:
    """r lies above and right of o on the attack's DSR-vs-preservation plot (at least as good on both, better on
    one)."""
    a, b = r["attacks"][attack]["dsr"], o["attacks"][attack]["dsr"]
    p, q = r["preservation"]["one_minus_lpips"], o["preservation"]["one_minus_lpips"]
    return a >= b and p >= q and (a > b or p > q)


def _short(count: int, n: int, reference: int, what: str, target: float = 0.95) -> str:
    """A missed target in images (count of n, against `target` × reference): the readings are shares of a few dozen
    images, so one image is a few hundredths."""
    needed = math.ceil(target * reference - 1e-9)
    return f": {count} of {n} {what}, {needed} would meet it" if count < needed else ""


def _kept_short(key: str, e: dict, base: dict) -> str:
    """The same where the record holds the counts it needs (a ratio: against the base model's own count)."""
    r = BY_KEY[key]
    if r.n_key not in e:
        return ""
    n = e[r.n_key]
    if not r.share:
        return _short(round(e[key] * n), n, n, r.counted)
    if r.share in e and r.share in base:
        base_count = round(base[r.share] * n)
        return _short(round(e[r.share] * n), n, base_count, f"{r.counted} (the base model: {base_count})")
    return ""


def verdicts(result: dict, extra: dict, preset_name: str = "duo_preset") -> list[str]:
    """The issue's targets for each DUO adapter, each stated on its own so a trade-off shows as one."""
    lines = []
    res = result["results"]
    for name, r in res.items():
        if not name.startswith("duo"):
            continue
        attacks = list(r["attacks"])
        weakest = r["attacks"][min(attacks, key=lambda a: r["attacks"][a]["dsr"])]
        worst = weakest["dsr"]
        pres = r["preservation"]["one_minus_lpips"]
        e = extra.get(name, {})
        erased = _short(round(worst * weakest["n"]), weakest["n"], weakest["n"], "images erased") \
            if "n" in weakest else ""
        parts = [f"min DSR over {len(attacks)} attacks {worst:.3f} ({'≥' if worst >= 0.95 else '<'} 0.95{erased})",
                 f"1 − LPIPS {pres:.3f} ({'≥' if pres >= 0.97 else '<'} 0.97)"]
        for reading in READINGS:
            key = reading.key
            if reading.judged and key in e:
                parts.append(f"{reading.column} {e[key]:.3f} ({'≥' if e[key] >= 0.95 else '<'} 0.95"
                             f"{_kept_short(key, e, extra.get('base', {}))})")
        others = [o for o in (*ESD_ROWS, "negative prompt", f"{preset_name}_lam0") if o in res and o != name]
        for o in others:
            won = [a for a in attacks if a in res[o]["attacks"] and dominates(r, res[o], a)]
            parts.append(f"above-right of {o} on {len(won)}/{len(attacks)} attack plots")
        lines.append(f"- {name}: " + "; ".join(parts))
    return lines


def same_recipe(adapter: Path, cfg) -> bool:
    """An adapter from an earlier run is reused only if its metadata records this very recipe."""
    from duo_unlearn.trainer.export import describe_adapter

    return adapter.exists() and recorded_recipe(describe_adapter(adapter)["duo"], cfg)


def recorded_recipe(facts: dict, cfg) -> bool:
    """Whether an adapter's metadata (`facts`, also kept in the table's record) records the recipe `cfg` plans."""
    from duo_unlearn.trainer.same_schedule import same_schedule

    if not same_schedule(facts, cfg):
        return False
    want = {"method": cfg.method, "lr": cfg.learning_rate}
    if cfg.method == "duo":
        want |= {"lambda": cfg.preservation_weight, "lambda_retain": cfg.lam_retain}  # same_schedule: the rest
    return all(facts.get(k) == v for k, v in want.items())


def write_section(path: Path, text: str, name: str = "efficacy_testbed") -> None:
    """Replace this benchmark's section of RESULTS.md (between markers), keeping any other benchmark's."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{text.rstrip()}\n{end}\n"
    old = path.read_text() if path.exists() else ""
    if start in old and end in old:
        new = old[:old.index(start)] + block + old[old.index(end) + len(end):].lstrip("\n")
    else:
        new = (old.rstrip() + "\n\n" if old.strip() else "") + block
    path.write_text(new)


def table_stem(model: str) -> str:
    """The file stem of a test bed's table (its JSON, plot and RESULTS.md section): efficacy_testbed for SD 1.x,
    efficacy_testbed_xl for testbed-xl, and so on."""
    return "efficacy_testbed" if model == "testbed" else f"efficacy_{model.replace('-', '_')}"


def save_record(record: dict, path: Path, results: Path) -> None:
    """The record as JSON at `path`, its plot beside it, and its section of `results` (RESULTS.md) written again."""
    save_plot(record, path.with_suffix(".png"))
    path.write_text(json.dumps(record, indent=1, default=str))
    text = markdown(record)
    write_section(results, text, record.get("stem", "efficacy_testbed"))
    print(text)


def fid_caveat(result: dict) -> str:
    """What the table's test-bed FID can say, from how many images each method's was read on."""
    from duo_unlearn.trainer.testbed.features import FEATURES

    fids = {name: r["quality"]["fid"] for name, r in result["results"].items() if "fid" in r.get("quality", {})}
    n = max((f["n"] for f in fids.values()), default=FEATURES + 1)
    if n > FEATURES:
        return ""
    base = f" (the base model itself reads {fids['base']['value']:.0f})" if "base" in fids else ""
    return (f". Each method's FID is read on {n} images against the network's {FEATURES} features, too few to "
            "estimate their covariance: the column tells a method that moved far (hundreds to thousands more) from "
            f"one that did not, and ranks the rest only by noise{base}")


def markdown(record: dict) -> str:
    """This benchmark's section of RESULTS.md, from its JSON record (so it can be rebuilt with --from-json)."""
    result, extra, train_seconds = record["report"], record["close_concept_and_agreement"], record["train_seconds"]
    args, sec, backbone = record["args"], record["seconds"], record["lpips_backbone"]
    attacks = result["attacks"]
    model = record.get("model", "testbed")
    record = {"stem": "efficacy_testbed"} | record
    lines = [
        f"# Efficacy on the test bed `{model}` ({result['model']['family'].upper()}, preset testbed-red)",
        "",
        "Reproduce (CPU, about the time below; adapters and pairs are reused from `--work` unless `--retrain`):",
        "",
        "```",
        record["command"],
        "```",
        "",
        table(result, extra, train_seconds),
        "",
        f"Plot (DSR against 1 − LPIPS, one panel per attack): `benchmarks/{record['stem']}.png`; full figures and "
        f"settings: `benchmarks/{record['stem']}.json`; direct-prompt images per method: "
        f"`benchmarks/{record['stem']}_grid_direct.png`"
        + (" (the full run's adapters)." if record.get("updates") else "."),
        "",
        *([("Rows measured since the full run, added or again (`--update`: the base model and negative prompting "
            "read as saved, to float rounding, and every row kept plans the recipe it was measured with; "
            "benchmarks/table_update.py): "
            + "; ".join(f"{u['date']}, {', '.join(f'`{r}`' for r in u['rows'])} (`{u['command']}`, eval "
                        f"{u['seconds']['eval']:.0f} s, readings {u['seconds']['close']:.0f} s)"
                        for u in record["updates"])
            + "; the last one's direct-prompt images: "
            f"`benchmarks/{record['stem']}_grid_direct_update.png`."), ""]
          if record.get("updates") else []),
        *([("Attacks measured again on the table's adapters, every row reading its direct and unrelated prompts as "
            "saved (benchmarks/reattack_testbed.py): " + "; ".join(
                f"{u['date']}, {u['attack']} on {len(u['rows'])} rows (`{u['command']}`, {u['seconds']:.0f} s)"
                + "".join(f"; `{row}` kept as measured before: {why}" for row, why in u["kept_as_before"].items())
                for u in record["attack_updates"]) + "."), ""]
          if record.get("attack_updates") else []),
        "Against the issue's targets (DSR ≥ 0.95 under every attack; 1 − LPIPS ≥ 0.97; orange, background and shape "
        "kept ≥ 0.95 of the base model; DUO above-right of ESD, negative prompting and DUO without λ on each plot):",
        "",
        *verdicts(result, extra),
        "",
        *([*pooled_lines(record["pooled_readings"]), ""] if record.get("pooled_readings") else []),
        "## Rows and settings",
        "",
        *[f"- `{name}`: {what}" for name, what in record.get("rows", {}).items()],
        f"- Every adapter: `unlearn()` with preset testbed-red ({record['pairs']['n']} pairs, SDEdit strength "
        f"{record['pairs']['strength']}, colour:red gating, twins with the paper's SDEdit unless 'region twins'), "
        f"{record['steps']} steps unless the recipe column says otherwise, rank 32, batch 4 pairs, seed 0; the recipe "
        "column is read from each adapter's "
        "metadata (β is derived from κ where the preset names κ).",
        f"- Sampling: DDIM {result['sampling']['steps']} steps, guidance {result['sampling']['guidance']}, "
        f"{args['images_per_prompt']} seed(s) per prompt, the same seeds for every method.",
        "- DSR: share of images the colour classifier does not read as red. Direct: the preset's 6 red prompts; "
        "synonyms: 6 prompts with crimson/scarlet.",
    ]
    if "concept_inversion" in attacks:
        ci = attacks["concept_inversion"]
        lines.append(f"- Concept inversion: a new token learnt per model on the pair dataset's {ci['settings']['images']} "
                     f"red images, Adam lr {ci['settings']['lr']}, batch {ci['settings']['batch']}, "
                     f"{ci['settings']['steps']} steps; eval loss before → after per model: " + ", ".join(
                         f"{k} {v['eval_loss_before']:.4f} → {v['eval_loss_after']:.4f}"
                         for k, v in ci["info"]["per_method"].items()))
    if "ring_a_bell" in attacks:
        rab = attacks["ring_a_bell"]
        lines.append(f"- Ring-a-bell: {len(rab['prompts'])} prompts of {rab['settings']['length']} tokens found by a "
                     f"genetic search (population {rab['settings']['population']}, {rab['settings']['generations']} "
                     f"generations, the word 'red' excluded) against the base text encoder: " +
                     "; ".join(f"`{q}`" for q in rab["prompts"]))
    if "unlearndiffatk" in attacks:
        ud = attacks["unlearndiffatk"]["settings"]
        lines.append("- UnlearnDiffAtk: per model and direct prompt, " + ", ".join(
            f"{k} {v}" for k, v in ud.items() if not isinstance(v, (list, dict))) + " (white-box, against the "
            "model's own denoising loss on the pair dataset's red images; prompts found are in the JSON)"
            + (f"; the classifier in the loop: the tokens written out after steps "
               f"{', '.join(map(str, ud['checks_after_steps']))}, and an image slot counts as attacked if the direct "
               "prompt's image or any of those prompts' on the same seed reads as red" if "checks_after_steps" in ud
               else "; an image slot counts as attacked if the found prompt's or the direct prompt's image on the "
                    "same seed reads as red") + ".")
    lines += [
        f"- 1 − LPIPS: {len(result['unrelated_prompts'])} unrelated prompts x {args['images_per_prompt']} seed(s), "
        f"adapter vs base, LPIPS alex with a **{backbone}** trunk"
        + (" (the ImageNet trunk could not be downloaded on this offline machine: a seeded random trunk with "
           "LPIPS' calibrated linear heads; not comparable with published LPIPS numbers)." if backbone == "random"
           else "."),
        "- Test-bed FID (where shown): `duo-unlearn eval --fid-features testbed`, the project's feature network, "
        "against test-bed renders of the unrelated prompts; not comparable with published FID" + fid_caveat(result)
        + ".",
        "- Kept (read by the colour classifier, against the base model's image of the same prompt and seed): orange: "
        "share of 'a orange <shape> on a <background> background' images read as orange, divided by the base "
        "model's share; background / shape / other colours: on every prompt of the other colours (45 prompts) x "
        "seeds. The retain set (where used) holds base-model images of those same prompts at other seeds.",
        *([f"- Background kept where drawn as asked: of the other-colour images whose background the base model drew "
           f"as the prompt asks ({extra['base']['background_right_n']} of {extra['base']['others_n']} at these seeds; "
           "in the rest it mostly mistakes gray and black for each other), the share the method still draws so. "
           "\"Background kept\" counts every change against the base model's image, also one that draws the asked "
           "background where the base model did not; this counts only the errors a method makes, and is the "
           "reading the reference row (a model trained again) can be held to."]
          if "background_right_n" in extra.get("base", {}) else []),
        *(["- Red prompts (every 'a red <shape> on a <background> background', 9 prompts x seeds): background and "
           "shape read as in the base model's image of the same prompt and seed; the erasure itself is the DSR "
           "columns'. These two say whether an adapter takes red away and leaves the picture, or draws something "
           "else (held to the same 0.95 below, though the issue's targets name the other prompts)."]
          if any("concept_n" in e for e in extra.values()) else []),
        f"- Time: total {sec['total']:.0f} s (training {sum(train_seconds.values()):.0f} s, eval {sec['eval']:.0f} s, "
        f"readings {sec['close']:.0f} s), torch {record['torch']}, {record['threads']} thread(s), {record['machine']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=None,
                   help="adapters, pairs and the eval report (default: runs/<stem>, git-ignored)")
    p.add_argument("--model", default="testbed", help="testbed (SD 1.x), testbed-xl (SDXL) or testbed-sd3 (SD3)")
    p.add_argument("--pair-detector", default=None, help=argparse.SUPPRESS)  # smoke tests on a tiny model
    p.add_argument("--steps", type=int, default=None,
                   help="training steps of every adapter (default: the preset's on the model's family; duo_v1: 300)")
    p.add_argument("--betas", default="500", help="comma-separated betas of the paper's-recipe rows (lr, λ coupled)")
    p.add_argument("--rows", default="all", help="comma-separated row names to run (default: all)")
    p.add_argument("--attacks", default=None, help="comma-separated (default: all five, on every family)")
    p.add_argument("--reference", action="append", default=[], metavar="ADAPTER",
                   help="also read this adapter as a row that is not a method (benchmarks/oracle_testbed.py's "
                        "test bed fine-tuned with red redrawn: what the targets look like for a model trained again)")
    p.add_argument("--images-per-prompt", type=int, default=4)
    p.add_argument("--ci-steps", type=int, default=300, help="concept inversion steps per model")
    p.add_argument("--lpips-backbone", default="auto", help="auto (pretrained if available, else random)")
    p.add_argument("--fid", default="testbed", help="FID features: testbed, or 'none'")
    p.add_argument("--results", default=str(HERE / "RESULTS.md"))
    p.add_argument("--retrain", action="store_true", help="train the adapters again even if present")
    p.add_argument("--reuse-report", action="store_true",
                   help="take the eval report from --work/report if it evaluated exactly these adapters and settings")
    p.add_argument("--from-json", help="only rebuild the RESULTS.md section from a saved record")
    p.add_argument("--update", metavar="ROWS",
                   help="comma-separated rows to measure again and put into the saved table beside the rows it "
                        "keeps, where the base model and negative prompting read as saved (to float rounding) and every "
                        "kept row still plans its recipe (benchmarks/table_update.py)")
    args = p.parse_args(argv)
    if args.update and (args.reference or args.rows != "all"):
        p.error("--update measures the rows it names; the saved table keeps the rest, its reference rows included")
    if args.from_json:
        record = json.loads(Path(args.from_json).read_text())
        stem = record.get("stem", "efficacy_testbed")
        write_section(Path(args.results), markdown(record), stem)
        save_plot(record, Path(args.results).parent / f"{stem}.png")
        return 0

    import torch

    from duo_unlearn.trainer.errors import UserError
    from duo_unlearn.trainer.evaluate import ATTACKS, EvalConfig, evaluate
    from duo_unlearn.trainer.evaluate.methods import BASE, NEGATIVE, Method, adapter_method
    from duo_unlearn.trainer.evaluate.preservation import build_lpips
    from duo_unlearn.trainer.models import load_model
    from duo_unlearn.trainer.pairs import generate_pairs
    from duo_unlearn.trainer.unlearn import UnlearnConfig, plan, unlearn

    started = time.time()
    stem = table_stem(args.model)
    saved_file = Path(args.results).parent / f"{stem}.json"
    if args.update and not saved_file.is_file():
        p.error(f"--update: no saved table {saved_file} to update (run the whole table first)")
    table_before = json.loads(saved_file.read_text()) if args.update else None
    work = Path(args.work or HERE.parent / "runs" / stem)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = load_model(args.model)
    preset = TESTBED_RED
    attacks = tuple(args.attacks.split(",")) if args.attacks else ATTACKS

    def progress(event):
        if event.message:
            print(f"[{time.time() - started:6.0f}s] {event.stage}: {event.message}", flush=True)

    adapters, rows = {}, {}
    seconds_file = work / "train_seconds.json"
    train_seconds = json.loads(seconds_file.read_text()) if seconds_file.exists() and not args.retrain else {}
    steps = args.steps  # None: each row takes the preset's steps on this family (its family table's, if any)
    wanted = None if args.rows == "all" else set(args.rows.split(","))
    if args.update:
        wanted = {r.strip() for r in args.update.split(",") if r.strip()}
    preset_steps = plan(UnlearnConfig(preset="testbed-red", model=args.model, steps=steps))[1][0].train.steps
    betas = [b.strip() for b in args.betas.split(",") if b.strip()]
    known = [name for name, _, _ in variants(betas, args.model)]
    unknown = sorted(wanted - set(known)) if wanted else []
    if unknown:
        p.error(f"{'--update' if args.update else '--rows'}: no row named {', '.join(unknown)} "
                f"(rows: {', '.join(known)})")
    # the rows to run and, for --update, the adapter rows it keeps (their recipes are checked against the plan)
    names = None if wanted is None else wanted | (
        {m["name"] for m in table_before["report"]["methods"] if m["kind"] == "adapter"} & set(known)
        if args.update else set())
    planned = plan_rows(work, betas, args.model, steps, args.pair_detector, names)
    if args.update:
        kept = {m["name"]: (recorded_recipe(m["facts"], planned[m["name"]][2].train) if m["name"] in planned
                            else None)
                for m in table_before["report"]["methods"]
                if m["kind"] == "adapter" and m["name"] not in wanted and "oracle" not in m["facts"]}
        stale = recipe_problems(kept)
        if stale:
            p.error(f"--update: {'; '.join(stale)}: measure them too, or run the whole table")
    for name, (what, ucfg, row_plan) in planned.items():
        if wanted is not None and name not in wanted:
            continue
        out = Path(ucfg.out)
        if args.retrain or not same_recipe(out, row_plan.train):
            t = time.time()
            unlearn(ucfg, progress, model=model)
            train_seconds[name] = time.time() - t
            seconds_file.write_text(json.dumps(train_seconds))
        adapters[name], rows[name] = out, what
    for path in map(Path, args.reference):
        if not path.is_file():
            p.error(f"--reference {path}: no such adapter file (benchmarks/oracle_testbed.py writes it)")
        adapters[path.stem] = path
        rows[path.stem] = (f"reference, not a method (`{path.as_posix()}`): the test bed fine-tuned on its own world "
                           "with every red shape drawn in another colour and the captions left as they were, "
                           "written as a full-rank LoRA by `python benchmarks/oracle_testbed.py` (run first: 41 "
                           "minutes on 2 CPU threads; lr 3e-4, the erasure check passed at step 1,400); it needs the "
                           "training data, which a user unlearning a checkpoint never has")
    # the attacks' red images are v1's unsafe images (pairs_image): made here when no row run now made them
    eval_pairs = planned["duo_v1"][2].pairs
    assert Path(eval_pairs.out) == work / "pairs_image", eval_pairs.out
    generate_pairs(eval_pairs, progress, model=model)
    backbone = args.lpips_backbone
    if backbone == "auto":
        try:
            build_lpips("alex", "pretrained")
            backbone = "pretrained"
        except UserError:
            backbone = "random"
            print("LPIPS: the pretrained alexnet trunk is not available offline; using a seeded random trunk")
    cfg = EvalConfig(model=args.model, preset="testbed-red", adapters=tuple(str(a) for a in adapters.values()),
                     images_per_prompt=args.images_per_prompt, pairs=str(work / "pairs_image"),
                     ci_steps=args.ci_steps, lpips_backbone=backbone, out=str(work / "report"), overwrite=True,
                     attacks=attacks,
                     fid_features=None if args.fid == "none" else args.fid)
    t = time.time()
    saved = work / "report" / "report.json"
    result = json.loads(saved.read_text()) if args.reuse_report and saved.exists() else None
    fresh = {a.name: a.facts for a in (adapter_method(p) for p in adapters.values())}
    if result is not None and (result["settings"] != json.loads(json.dumps(asdict(cfg))) or fresh != {
            m["name"]: m["facts"] for m in result["methods"] if m["kind"] == "adapter"}):
        print("the saved report evaluated other adapters or settings: evaluating again")
        result = None
    if result is None:
        result = evaluate(cfg, progress, model=model)
        eval_seconds = time.time() - t
    else:
        eval_seconds = result["seconds"]

    methods = [Method("base", BASE), Method("negative prompt", NEGATIVE, negative_prompt="red")]
    methods += [adapter_method(a) for a in adapters.values()]
    t = time.time()
    extra = close_and_agreement(args.model, methods, list(preset.unrelated_prompts), args.images_per_prompt,
                                cfg.seed, result["sampling"]["steps"], result["sampling"]["guidance"])
    close_seconds = time.time() - t
    total = time.time() - started

    record = {"report": result, "close_concept_and_agreement": extra, "stem": stem, "model": args.model,
              "rows": rows, "train_seconds": {k: v for k, v in train_seconds.items() if k in adapters},
              "seconds": {"eval": eval_seconds, "close": close_seconds, "total": total},
              "steps": preset_steps, "lpips_backbone": backbone,
              "pairs": {"n": preset.num_pairs, "strength": preset.strength},
              "command": ("python benchmarks/efficacy_testbed.py " +
                          " ".join(sys.argv[1:] if argv is None else argv)).strip(),
              "args": vars(args), "torch": torch.__version__, "machine": platform.machine(),
              "threads": torch.get_num_threads()}
    dest = Path(args.results).parent
    if args.update:
        record = json.loads(json.dumps(record, default=str))  # as the saved one was read back
        differ = measurement_problems(table_before, record)
        if differ:
            print(f"--update: this run measured otherwise than the saved table ({'; '.join(differ)}): its rows "
                  f"cannot join it; run the whole table", file=sys.stderr)
            return 2
        order = ["base", "negative prompt", *planned]
        record = merged(table_before, record, [n for n in planned if n in wanted], order,
                        time.strftime("%Y-%m-%d"), {n: what for n, (what, _, _) in planned.items()})
        shutil.copyfile(work / "report" / "grid_direct.png", dest / f"{stem}_grid_direct_update.png")
    else:
        shutil.copyfile(work / "report" / "grid_direct.png", dest / f"{stem}_grid_direct.png")
    save_record(record, saved_file, Path(args.results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
