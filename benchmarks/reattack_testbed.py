"""Measure one attack of a saved efficacy table again on every row, after the attack itself changed.

    python benchmarks/reattack_testbed.py --attack unlearndiffatk     # the SD 1.x table; --model testbed-xl, ...

The whole table takes hours (efficacy_testbed.py); one attack on its adapters takes minutes. Each row is evaluated
again with its direct prompts and the attack only, from the adapter the table measured (`--work`, as
efficacy_testbed.py left it; its recorded recipe must be the table's, to float rounding). Every row must read its direct prompts and
its unrelated prompts as saved (the same adapter, drawn the same way: table_update.attack_measurement_problems);
then the attack's cells, its settings and what it found replace the saved ones. The base model and negative
prompting must read so, or nothing joins (another machine draws other images); a row whose adapter is not on this
machine, or reads otherwise (trained again since), keeps the reading it had, and the table says which and why.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # its siblings, run as a script or loaded from a file

from efficacy_testbed import save_record, table_stem  # noqa: E402 - needs the path above
from table_update import (ATTACK_SETTINGS, CONTROLS, attack_measurement_problems, attack_merged,  # noqa: E402
                          same)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--attack", required=True, choices=sorted(ATTACK_SETTINGS))
    p.add_argument("--model", default="testbed", help="testbed (SD 1.x), testbed-xl (SDXL) or testbed-sd3 (SD3)")
    p.add_argument("--work", default=None, help="the table's adapters and pairs (default: runs/<stem>)")
    p.add_argument("--results", default=str(HERE / "RESULTS.md"))
    p.add_argument("--reuse-report", action="store_true",
                   help="take the eval report from --work/reattack if it evaluated exactly these adapters and settings")
    args = p.parse_args(argv)

    from duo_unlearn.trainer.errors import UserError
    from duo_unlearn.trainer.evaluate import EvalConfig, evaluate
    from duo_unlearn.trainer.evaluate.methods import adapter_method
    from duo_unlearn.trainer.models import load_model

    started = time.time()  # the progress lines' clock
    stem = table_stem(args.model)
    saved_file = HERE / f"{stem}.json"
    if not saved_file.is_file():
        p.error(f"no saved table {saved_file} (run benchmarks/efficacy_testbed.py first)")
    record = json.loads(saved_file.read_text())
    report = record["report"]
    if args.attack not in report["attacks"]:
        p.error(f"the saved table did not measure {args.attack}")
    work = Path(args.work or HERE.parent / "runs" / stem)
    adapters, kept = [], {}
    for m in report["methods"]:
        if m["kind"] != "adapter":
            continue
        path = work / Path(m["adapter"]).name
        if not path.is_file():
            kept[m["name"]] = "its adapter is not on this machine"
            continue
        try:
            facts = adapter_method(path).facts
        except UserError as e:
            p.error(str(e))
        if not same(facts, m["facts"]):  # β from κ: float rounding between runs
            p.error(f"{path} is not the adapter the table measured as {m['name']} (another recipe or run): "
                    "measure the row again with efficacy_testbed.py --update")
        adapters.append(str(path))
    settings = {f.name: report["settings"][f.name] for f in fields(EvalConfig) if f.name in report["settings"]
                and not f.name.startswith(ATTACK_SETTINGS[args.attack])}  # the attack's own: as the code has them now
    settings.update(adapters=tuple(adapters), attacks=("direct", args.attack), out=str(work / "reattack"),
                    overwrite=True, pairs=str(work / Path(settings["pairs"]).name) if settings.get("pairs") else None)
    cfg = EvalConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})

    def progress(event):
        if event.message:
            print(f"[{time.time() - started:6.0f}s] {event.stage}: {event.message}", flush=True)

    saved_report = work / "reattack" / "report.json"
    fresh = json.loads(saved_report.read_text()) if args.reuse_report and saved_report.is_file() else None
    if fresh is not None and fresh["settings"] != json.loads(json.dumps(asdict(cfg))):
        print("the saved report evaluated other adapters or settings: evaluating again")
        fresh = None
    if fresh is None:
        fresh = evaluate(cfg, progress, model=load_model(args.model))
    rows = [m["name"] for m in fresh["methods"]]
    problems = attack_measurement_problems(record, fresh, rows)
    refused = [q for row in ("", *CONTROLS) for q in problems.get(row, [])]
    if refused:
        print(f"this run read otherwise than the saved table ({'; '.join(refused)}): its {args.attack} cannot join "
              "it; run the whole table", file=sys.stderr)
        return 2
    kept |= {row: "its adapter on this machine draws otherwise than the one measured (trained again since; on it "
                  f"the attack reads {fresh['results'][row]['attacks'][args.attack]['dsr']:.3f})" for row in problems}
    rows = [row for row in rows if row not in problems]
    command = ("python benchmarks/reattack_testbed.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    record = attack_merged(record, fresh, args.attack, rows, kept, time.strftime("%Y-%m-%d"), command,
                           fresh["seconds"])
    save_record(record, saved_file, Path(args.results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
