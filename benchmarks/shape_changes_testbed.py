"""Which shapes an adapter of the efficacy table draws otherwise than the base model, by the prompt's colour and shape.

    python benchmarks/shape_changes_testbed.py --row duo_preset --seed-sets 0,1000,2000,3000

The table's "shape accuracy ÷ base" is one number over every other-colour prompt. This splits it: for each colour
and shape asked, of the images the base model drew as the shape asked, how many the adapter draws otherwise (made
wrong), and of the rest how many it draws right (mended); and every change as "asked → drawn". Same prompts, seeds,
sampler and colour classifier as the table (`efficacy_testbed.close_and_agreement`), the row's adapter from the
table's work folder. It asks where a shortfall comes from: if the winners of the pairs (a twin drawn as another shape
than its safe prompt names, trained on that prompt) taught it, the changes gather on the safe prompts' colour and
shape; if the adapter moves every image a little, they gather on what the base model itself draws least surely.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def tally(truth: list[tuple[str, str, str]], base_shapes: list[str], now_shapes: list[str]) -> dict:
    """Per (colour, shape) asked: images the base model drew as asked, of those the ones now drawn otherwise, and
    the ones the base model drew otherwise that are now as asked; and the count of each change "asked → drawn"."""
    cells: dict[str, dict[str, int]] = {}
    changes: Counter = Counter()
    for (colour, shape, _), was, now in zip(truth, base_shapes, now_shapes, strict=True):
        cell = cells.setdefault(f"{colour} {shape}", {"images": 0, "base_right": 0, "made_wrong": 0, "mended": 0})
        cell["images"] += 1
        if was == shape:
            cell["base_right"] += 1
            if now != shape:
                cell["made_wrong"] += 1
                changes[f"{shape} → {now}"] += 1
        elif now == shape:
            cell["mended"] += 1
    return {"cells": cells, "changes": dict(changes.most_common())}


def merged(parts: list[dict]) -> dict:
    """Tallies of several seed sets as one (counts summed)."""
    cells: dict[str, dict[str, int]] = {}
    changes: Counter = Counter()
    for part in parts:
        for key, cell in part["cells"].items():
            into = cells.setdefault(key, dict.fromkeys(cell, 0))
            for k, v in cell.items():
                into[k] += v
        changes.update(part["changes"])
    return {"cells": cells, "changes": dict(changes.most_common())}


def markdown(row: str, seed_sets: list[int], result: dict, colours: list[str], shapes: list[str]) -> str:
    cells = result["cells"]
    head = "| colour asked | " + " | ".join(shapes) + " |"
    lines = [f"Shapes `{row}` draws otherwise than the base model (seed sets from {', '.join(map(str, seed_sets))}); "
             "cell: made wrong / drawn as asked by the base model (+ mended)", "", head,
             "|" + "---|" * (len(shapes) + 1)]
    for colour in colours:
        row_cells = [cells.get(f"{colour} {s}") for s in shapes]
        lines.append(f"| {colour} | " + " | ".join(
            f"{c['made_wrong']} / {c['base_right']} (+{c['mended']})" if c else "–" for c in row_cells) + " |")
    totals = [sum(cells[f"{c} {s}"][k] for c in colours if f"{c} {s}" in cells) for s in shapes
              for k in ("made_wrong", "base_right")]
    lines.append("| all | " + " | ".join(f"{totals[2 * i]} / {totals[2 * i + 1]}" for i in range(len(shapes))) + " |")
    lines += ["", "Changes (asked → drawn): " + ", ".join(f"{k} {v}" for k, v in result["changes"].items())]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--row", default="duo_preset", help="an adapter row of the saved table")
    p.add_argument("--seed-sets", default="0", help="first evaluation seed of each set (comma-separated)")
    p.add_argument("--work", default=str(HERE.parent / "runs" / "efficacy_testbed"), help="the table's adapters")
    p.add_argument("--table", default=str(HERE / "efficacy_testbed.json"))
    p.add_argument("--json", default=None, help="also write the tally here")
    args = p.parse_args(argv)
    try:
        seed_sets = [int(s) for s in args.seed_sets.split(",")]
    except ValueError:
        p.error(f"--seed-sets takes comma-separated integers, got {args.seed_sets!r}")
    table_file = Path(args.table)
    if not table_file.is_file():
        p.error(f"no saved table {table_file} (run benchmarks/efficacy_testbed.py first)")
    record = json.loads(table_file.read_text())
    report = record["report"]
    rows = {m["name"] for m in report["methods"] if m["kind"] == "adapter"}
    if args.row not in rows:
        p.error(f"not an adapter row of the saved table: {args.row}")
    adapter = Path(args.work) / f"{args.row}.safetensors"
    if not adapter.is_file():
        p.error(f"no adapter {adapter}: train it with benchmarks/table_pooled.py --rows {args.row} --seed-sets "
                f"{report['settings']['seed']}, or efficacy_testbed.py")

    from duo_unlearn.trainer.detectors.colour import read_image
    from duo_unlearn.trainer.evaluate.methods import BASE, Method, activated, adapter_method, load_adapters
    from duo_unlearn.trainer.evaluate.run import generate
    from duo_unlearn.trainer.models import load_model
    from duo_unlearn.trainer.testbed.shapes import SHAPES, full_prompt
    from efficacy_testbed import kept_prompts

    per_prompt = record["args"]["images_per_prompt"]
    steps, guidance = report["sampling"]["steps"], report["sampling"]["guidance"]
    pipe = load_model(record.get("model", "testbed")).pipe
    method = adapter_method(adapter)
    load_adapters(pipe, [method])
    _, specs = kept_prompts()
    prompts = [full_prompt(*s) for s in specs]
    truth = [s for s in specs for _ in range(per_prompt)]
    parts = []
    for seed in seed_sets:
        shapes = {}
        for m in (Method("base", BASE), method):
            with activated(pipe, m) as negative:
                shapes[m.name] = [read_image(im).shape for im in
                                  generate(pipe, prompts, per_prompt, seed, steps, guidance, negative)]
        parts.append(tally(truth, shapes["base"], shapes[method.name]))
    result = merged(parts)
    colours = list(dict.fromkeys(c for c, _, _ in specs))
    print(markdown(args.row, seed_sets, result, colours, list(SHAPES)))
    if args.json:
        Path(args.json).write_text(json.dumps({"row": args.row, "seed_sets": seed_sets, "per_set": parts,
                                               "pooled": result}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
