"""Screen one change to the SD 1.x test-bed preset over training seeds, before a full efficacy table.

    python benchmarks/screen_testbed.py --name preset
    python benchmarks/screen_testbed.py --name auto --set concept_directions=auto --seeds 0,1,2

Each training seed makes its own pairs (as a user running `unlearn --seed N` would) and trains `unlearn()` with the
testbed-red preset and the `--set` overrides (UnlearnConfig fields; values read as JSON, else as text). Readings at
evaluation seeds from 5000, so they do not reuse the table's: DSR on the 6 direct and 6 synonym prompts × 4 images,
1 − LPIPS (random trunk) on the 4 unrelated prompts × 4 seeds, and the colour classifier's readings of the efficacy
table (orange ÷ base, background kept, shape accuracy ÷ base, other colours kept; on the red prompts, background
and shape kept). One line per seed and their mean;
the record goes to --work/<name>.json. The colour readings of one seed set move by several images with the seeds
alone (RESULTS.md, forty-fourth session: the same adapter read shapes 0.899 of base from seed 0 and 1.00 from 5000),
so `--kept-seeds 5000,6000,7000,8000` reads them on several sets and pools them by image counts, as the table's
pooled readings are (`colour_readings.pool`).
The screen is for ranking changes: a change is adopted only after the full table (`efficacy_testbed.py`) is run
again with it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from colour_readings import READINGS as COLOUR, pool  # noqa: E402 - needs the path above

READINGS = ("direct", "synonyms", "one_minus_lpips", *(r.key for r in COLOUR))
EVAL_SEED = 5000


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set takes field=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
        if isinstance(out[key], list):
            out[key] = tuple(out[key])
    return out


def line(name: str, r: dict) -> str:
    steps = f" ({r['steps']})" if "steps" in r else ""
    right = f" ({r['background_right_kept']:.2f} where drawn as asked)" if "background_right_kept" in r else ""
    erased = f", red erased {r['concept_erased']:.2f}" if "concept_erased" in r else ""
    return (f"{name}: {r['direct']:.2f} / {r['synonyms']:.2f}, {r['one_minus_lpips']:.3f}, {r['orange_vs_base']:.2f}, "
            f"{r['background_kept']:.2f}{right}, {r['shape_accuracy_vs_base']:.2f}, {r['colour_kept']:.2f}; "
            f"red prompts {r['concept_background_kept']:.2f}, {r['concept_shape_kept']:.2f}{erased}{steps}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True, help="the row's name (its adapters and record are kept under it)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="an UnlearnConfig override")
    p.add_argument("--seeds", default="0,1,2", help="training seeds")
    p.add_argument("--kept-seeds", default=str(EVAL_SEED),
                   help="first evaluation seed of each set the colour readings are pooled over (default: one set)")
    p.add_argument("--model", default="testbed")
    p.add_argument("--work", default=str(HERE.parent / "runs" / "screen"))
    args = p.parse_args(argv)
    overrides = parse_overrides(args.set)
    try:
        kept_seeds = [int(s) for s in args.kept_seeds.split(",")]
    except ValueError:
        p.error(f"--kept-seeds takes comma-separated integers, got {args.kept_seeds!r}")

    import torch

    from duo_unlearn.trainer.evaluate import EvalConfig, evaluate
    from duo_unlearn.trainer.evaluate.methods import BASE, Method, adapter_method
    from duo_unlearn.trainer.models import load_model
    from duo_unlearn.trainer.presets import get_preset
    from duo_unlearn.trainer.unlearn import UnlearnConfig, plan, unlearn
    from duo_unlearn.trainer.pairs_folder import pairs_folder
    from efficacy_testbed import close_and_agreement

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model)
    preset = get_preset("testbed-red")
    rows = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        started = time.time()
        torch.manual_seed(0)
        out = work / f"{args.name}_s{seed}.safetensors"
        ucfg = UnlearnConfig(preset="testbed-red", model=args.model, out=str(out), preview=False, seed=seed,
                             overwrite=True, **overrides)
        # one folder per pair settings (any --set that changes the pairs gets its own), shared by rows that agree
        ucfg.pairs_dir = str(pairs_folder(work, f"pairs_s{seed}", args.model, plan(ucfg)[1]))
        unlearn(ucfg, model=model)
        trained = time.time() - started
        report = evaluate(EvalConfig(model=args.model, preset="testbed-red", adapters=(str(out),), base=False,
                                     negative_prompt="", attacks=("direct", "prompts"), seed=EVAL_SEED,
                                     lpips_backbone="random", out=str(work / f"{args.name}_s{seed}_report"),
                                     overwrite=True), model=load_model(args.model))  # eval leaves its adapter on
        result = report["results"][out.stem]
        methods = [Method("base", BASE), adapter_method(out)]
        read = [close_and_agreement(args.model, methods, list(preset.unrelated_prompts), 4, kept_seed,
                                    report["sampling"]["steps"], report["sampling"]["guidance"])
                for kept_seed in kept_seeds]
        kept_sets = [r[out.stem] for r in read]
        kept = pool(kept_sets, [r["base"] for r in read])
        facts = methods[1].facts
        rows[seed] = {"direct": result["attacks"]["direct"]["dsr"], "synonyms": result["attacks"]["prompts"]["dsr"],
                      "one_minus_lpips": result["preservation"]["one_minus_lpips"],
                      **{k: kept[k] for k in READINGS[3:]}, "steps": facts.get("steps"),
                      **({"kept_sets": {s: {k: r[k] for k in READINGS[3:]} for s, r in zip(kept_seeds, kept_sets)}}
                         if len(kept_seeds) > 1 else {}),
                      "seconds": {"train": trained, "total": time.time() - started}}
        print(line(f"seed {seed}", rows[seed]), flush=True)
    mean = {k: statistics.fmean(r[k] for r in rows.values()) for k in READINGS}
    print(line("mean", mean))
    record = {"name": args.name, "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()},
              "eval_seed": EVAL_SEED, "kept_seeds": kept_seeds, "rows": rows, "mean": mean, "torch": torch.__version__,
              "command": "python benchmarks/screen_testbed.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    (work / f"{args.name}.json").write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
