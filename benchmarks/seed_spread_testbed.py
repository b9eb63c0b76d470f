"""How far do the efficacy table's kept-readings move with the evaluation seeds alone? The same adapters, other seeds.

    python benchmarks/seed_spread_testbed.py runs/efficacy_testbed/duo_preset.safetensors
    python benchmarks/seed_spread_testbed.py A.safetensors B.safetensors --seed-sets 0,1000,2000,3000 --json s.json

The efficacy table reads orange, background, shape and other colours kept, and the red prompts' background and shape,
on one set of seeds (images per prompt 4, seeds from 0: 36 orange, 180 other-colour and 36 red images). This reads them again, with the table's own reading
(`efficacy_testbed.close_and_agreement`), on disjoint seed sets, for each adapter and for negative prompting (the
smallest change a user can make), and prints each set, the range over the sets, and the pooled reading over all of
them. A difference between two recipes smaller than that range is not a difference the table can show.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from colour_readings import READINGS, pool  # noqa: E402 - needs the path above


def summary(name: str, per_set: list[dict], base_sets: list[dict]) -> str:
    """Each reading's range over the sets and its pooled value (`colour_readings.pool`); `base_sets` are the base
    model's readings of the same sets, which a ratio to the base model is pooled against."""
    pooled = pool(per_set, base_sets)
    cells = []
    for r in READINGS:
        if r.key not in pooled:
            continue  # a record from before the reading existed
        values = [s[r.key] for s in per_set]
        cells.append(f"{r.column} {min(values):.3f}–{max(values):.3f} (pooled {pooled[r.key]:.3f})")
    return f"{name}: " + "; ".join(cells)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("adapters", nargs="+")
    p.add_argument("--model", default="testbed")
    p.add_argument("--seed-sets", default="0,1000,2000,3000", help="first seed of each set (the table's: 0)")
    p.add_argument("--images-per-prompt", type=int, default=4)
    p.add_argument("--json", help="also write every reading here")
    args = p.parse_args(argv)

    from duo_unlearn.trainer.evaluate.methods import BASE, NEGATIVE, Method, adapter_method
    from duo_unlearn.trainer.presets import get_preset
    from efficacy_testbed import close_and_agreement

    preset = get_preset("testbed-red")
    methods = [Method("negative prompt", NEGATIVE, negative_prompt="red")]
    methods += [adapter_method(Path(a)) for a in args.adapters]
    seeds = [int(s) for s in args.seed_sets.split(",")]
    readings: dict[str, list[dict]] = {name: [] for name in ["base"] + [m.name for m in methods]}
    for seed in seeds:
        out = close_and_agreement(args.model, [Method("base", BASE)] + methods, list(preset.unrelated_prompts),
                                  args.images_per_prompt, seed, preset.sample_steps, preset.guidance)
        readings["base"].append(out["base"])
        for m in methods:
            readings[m.name].append(out[m.name])
            r = out[m.name]
            print(f"seeds from {seed}, {m.name}: " + ", ".join(f"{c.column} {r[c.key]:.3f}" for c in READINGS),
                  flush=True)
    for m in methods:
        print(summary(m.name, readings[m.name], readings["base"]))
    if args.json:
        Path(args.json).write_text(json.dumps({"seed_sets": seeds, "readings": readings}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
