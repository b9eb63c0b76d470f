"""The efficacy table's colour readings pooled over several sets of evaluation seeds, for the rows its targets compare.

    python benchmarks/table_pooled.py        # duo_preset, duo_preset_lam0, duo_paper_b500, esd; eight seed sets

The table reads orange, backgrounds, shapes and the other colours on one set of seeds (36 orange, 180 other-colour
and 36 red images). With the seeds alone a reading moves by several images (RESULTS.md, forty-fourth session: one
adapter read shapes 0.899 of base from seed 0 and 1.00 from seed 5000), more than the gaps the targets ask about.
This reads the same adapters, with the table's own reading (`efficacy_testbed.close_and_agreement`), on more sets,
and pools them by image counts: a ratio to the base model is the images read right over the base model's, summed
over the sets.

The table's own set (its evaluation seed) must be one of them, and there every method, the base model and negative
prompting included, must read as the saved table has it, figure for figure: so the adapters are the table's and
the measurement is its. A row's adapter missing from --work is trained again with its row's recipe (the training
is seeded; on this CPU it gives the same file), and must then record what the table's does.

The readings go into benchmarks/efficacy_testbed.json under "pooled_readings"; the RESULTS.md section shows them
under the table (`efficacy_testbed.markdown`). Rows measured before over the same sets are kept, once the base
model and negative prompting read again as they did then.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from colour_readings import BY_KEY, READINGS, pool  # noqa: E402 - benchmarks/ is on the path from here on

GOAL_ROWS = ("duo_preset", "duo_preset_lam0", "duo_paper_b500", "esd")  # what the targets and the plot compare
SEED_SETS = (0, 1000, 2000, 3000, 5000, 6000, 7000, 8000)  # the sets of the screens' eight-set readings
CONTROLS = ("base", "negative prompt")
TARGETS = ("orange_vs_base", "background_kept", "shape_accuracy_vs_base")  # the kept-targets, 0.95 each
# DSR's 0.95 read on every red prompt: the attacks' direct images are the 6 training prompts at one seed set; these
# are all 9 (3 shape × background pairs no training prompt names) on every set
ERASED = "concept_erased"


def _cell(r: dict, key: str) -> str:
    got, of = r[f"{key}_count"]
    return f"{r[key]:.3f} ({got} / {of})"


def pooled_lines(pooled: dict) -> list[str]:
    """The RESULTS.md lines for a record's "pooled_readings": a table, and each DUO row against the targets."""
    rows, sets = pooled["rows"], pooled["seed_sets"]
    n_others = next(iter(rows.values()))["pooled"]["background_kept_count"][1]
    lines = [
        f"### Colour readings pooled over {len(sets)} sets of evaluation seeds",
        "",
        f"The table's colour readings again, on the seed sets from {', '.join(map(str, sets))} (the table's set is "
        f"the first; {n_others} other-colour images in all), the same adapters, pooled by image counts ("
        + "; ".join(f"{', '.join(f'`{r}`' for r in run['rows'])}: `{run['command']}`, {run['date']}, "
                    f"{run['seconds']['total'] / 60:.0f} minutes" for run in pooled["runs"])
        + "; each run read the base model and negative prompting again, as before, and the table's set as saved for "
        "every method). Cells: the pooled reading (images that count / out of; for a ratio to the base model, "
        "images read right / the base model's). \"Red erased\": the red prompts' images (every shape on every "
        "background) in which the classifier finds no red; the table's DSR direct reads only the preset's training "
        "prompts, on one seed set.",
        "",
        "| method | " + " | ".join(r.column for r in READINGS) + " |",
        "|" + "---|" * (len(READINGS) + 1),
    ]
    lines += [f"| {name} | " + " | ".join(_cell(r["pooled"], c.key) for c in READINGS) + " |" for name, r in rows.items()]
    lines.append("")
    for name, r in rows.items():
        if not name.startswith("duo"):
            continue
        p = r["pooled"]
        lines.append(f"- {name}, pooled: " + "; ".join(
            f"{BY_KEY[k].column} {p[k]:.3f} ({'≥' if p[k] >= 0.95 else '<'} 0.95: {p[f'{k}_count'][0]} of "
            f"{p[f'{k}_count'][1]}, {math.ceil(0.95 * p[f'{k}_count'][1] - 1e-9)} would meet it)"
            for k in (*TARGETS, ERASED) if k in p))
    return lines


def _problem(saved_readings: dict, now: dict) -> list[str]:
    """Each method whose readings are not the saved ones, with the readings that differ (saved → now)."""
    from table_update import same

    out = []
    for name, r in now.items():
        was = saved_readings.get(name) or {}
        differ = [f"{k} {was.get(k)} → {v}" for k, v in r.items() if not same(was.get(k), v)]
        if differ:
            out.append(f"{name} ({', '.join(differ)})")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=",".join(GOAL_ROWS), help="comma-separated rows of the saved table")
    p.add_argument("--seed-sets", default=",".join(map(str, SEED_SETS)),
                   help="first evaluation seed of each set; the table's own must be one of them")
    p.add_argument("--work", default=str(HERE.parent / "runs" / "efficacy_testbed"),
                   help="the table's adapters (trained here again where missing)")
    p.add_argument("--table", default=str(HERE / "efficacy_testbed.json"))
    p.add_argument("--results", default=str(HERE / "RESULTS.md"))
    args = p.parse_args(argv)
    try:
        seed_sets = [int(s) for s in args.seed_sets.split(",")]
    except ValueError:
        p.error(f"--seed-sets takes comma-separated integers, got {args.seed_sets!r}")
    if len(set(seed_sets)) != len(seed_sets):
        p.error(f"--seed-sets names a set twice: {args.seed_sets}")
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    table_file = Path(args.table)
    if not table_file.is_file():
        p.error(f"no saved table {table_file} (run benchmarks/efficacy_testbed.py first)")
    record = json.loads(table_file.read_text())
    report = record["report"]
    facts = {m["name"]: m["facts"] for m in report["methods"] if m["kind"] == "adapter"}
    unknown = [r for r in rows if r not in facts or "oracle" in facts[r]]
    if unknown:
        p.error(f"not an adapter row of the saved table: {', '.join(unknown)}")
    table_seed = report["settings"]["seed"]
    if table_seed not in seed_sets:
        p.error(f"--seed-sets must include the table's own set ({table_seed}): there the readings are checked "
                "against the saved ones")

    import torch

    from duo_unlearn.trainer.evaluate.methods import BASE, NEGATIVE, Method, adapter_method
    from duo_unlearn.trainer.models import load_model
    from duo_unlearn.trainer.unlearn import unlearn
    from efficacy_testbed import TESTBED_RED, close_and_agreement, markdown, plan_rows, same_recipe, write_section
    from table_update import runs_keeping, same

    started = time.time()
    model_name, work = record.get("model", "testbed"), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    betas = [str(b) for b in str(record["args"].get("betas", "500")).split(",")]
    planned = plan_rows(work, betas, model_name, record["args"].get("steps"), names=set(rows))
    torch.manual_seed(0)
    for name in rows:
        ucfg, row_plan = planned[name][1], planned[name][2]
        if not same_recipe(Path(ucfg.out), row_plan.train):
            print(f"training {name} (its adapter is not in {work})", flush=True)
            unlearn(ucfg, model=load_model(model_name))
        got = json.loads(json.dumps(adapter_method(Path(ucfg.out)).facts, default=str))  # as the table saved it
        if not same(got, facts[name]):
            differ = sorted(k for k in set(got) | set(facts[name]) if not same(got.get(k), facts[name].get(k)))
            print(f"{ucfg.out} is not the table's {name} (its metadata differs in {', '.join(differ)}): measure the "
                  "row again with efficacy_testbed.py --update first", file=sys.stderr)
            return 2

    methods = [Method("base", BASE), Method("negative prompt", NEGATIVE, negative_prompt="red")]
    methods += [adapter_method(Path(planned[name][1].out)) for name in rows]
    sampling = report["sampling"]
    per_set: dict[str, list[dict]] = {m.name: [] for m in methods}
    for seed in seed_sets:
        t = time.time()
        read = close_and_agreement(model_name, methods, list(TESTBED_RED.unrelated_prompts),
                                   record["args"]["images_per_prompt"], seed, sampling["steps"], sampling["guidance"])
        if seed == table_seed:
            differ = _problem(record["close_concept_and_agreement"], read)
            if differ:
                print(f"on the table's own seeds {'; '.join(differ)} read otherwise than the saved table: not its "
                      "adapters (measure those rows again: efficacy_testbed.py --update ROWS) or not its measurement",
                      file=sys.stderr)
                return 2
        for name, r in read.items():
            per_set[name].append(r)
        print(f"seeds from {seed} ({time.time() - t:.0f} s): " + "; ".join(
            f"{name} shapes {r['shape_accuracy_vs_base']:.3f}, orange {r['orange_vs_base']:.3f}, background "
            f"{r['background_kept']:.3f}" for name, r in read.items() if name != "base"), flush=True)

    before = record.get("pooled_readings")
    kept, earlier = {}, []
    if before and before["seed_sets"] == seed_sets:
        differ = [c for c in CONTROLS if not same(before["rows"][c]["per_set"], per_set[c])]
        if differ:
            print(f"{', '.join(differ)} read otherwise than at the earlier pooled run: its rows cannot stay beside "
                  "these; run them again with --rows", file=sys.stderr)
            return 2
        kept = {k: v for k, v in before["rows"].items() if k not in per_set}
        earlier = runs_keeping(before["runs"], lambda r: r in kept)
    measured = {name: {"per_set": sets, "pooled": pool(sets, per_set["base"])} for name, sets in per_set.items()}
    order = ["base", "negative prompt", *report["results"]]
    both = kept | measured
    record["pooled_readings"] = {
        "seed_sets": seed_sets, "rows": {n: both[n] for n in order if n in both},
        "runs": earlier + [{
            "rows": rows, "date": time.strftime("%Y-%m-%d"), "seconds": {"total": time.time() - started},
            "command": " ".join(["python benchmarks/table_pooled.py", *(sys.argv[1:] if argv is None else argv)])}],
        "torch": torch.__version__, "threads": torch.get_num_threads()}
    table_file.write_text(json.dumps(record, indent=1, default=str))
    write_section(Path(args.results), markdown(record), record.get("stem", "efficacy_testbed"))
    print("\n".join(pooled_lines(record["pooled_readings"])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
