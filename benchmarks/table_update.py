"""Measuring some rows of a saved efficacy table again and putting them beside the rows it keeps.

From nothing on disk the SD 1.x table takes about three hours on 2 CPU threads (its rows' pairs and training, the
five attacks on 23 methods, the colour readings, the reference model), more than a working session. Each method is
measured on its own: its images, attacks and readings are seeded by the evaluation seed and the prompt order alone,
never by which other methods share the run. So a row measured today may stand beside rows measured earlier, if

- the measurement is the same: the same settings, sampling, attack prompts and FID reference, torch version and
  thread count, and the two controls, the base model and negative prompting, measured again, read as saved: every
  prompt found and colour count exactly, every score, loss and distance to within float rounding (TOLERANCE: two
  runs of the same CPU build differ in the 6th to 7th digit, e.g. FID 457.4248 and 457.4293, a found prompt's
  fitness −0.69633275 and −0.69633269); a machine that draws other images cannot pass this;
- every kept row still plans the recipe it was measured with (a preset change moves every "preset + one change" row,
  which must then be measured again too).

`recipe_problems()` and `measurement_problems()` say what stands in the way; `merged()` makes the new record, with
the run listed under "updates".
"""
from __future__ import annotations

import copy
import json
import math

CONTROLS = ("base", "negative prompt")  # measured in every run: the check that the measurement is the same
SAME = ("model", "steps", "lpips_backbone", "pairs", "torch", "machine", "threads")  # the record's own fields
PER_RUN_SETTINGS = ("adapters", "out")  # what each run's settings name for itself
TOLERANCE = {"rel_tol": 1e-4, "abs_tol": 1.5e-4}  # figures kept to 4 decimals: rounding may move the last by one
NOTES = ("caveat",)  # words a report keeps beside a figure (FID from few images): they follow from the settings


def readings(value):
    """The value without the notes kept beside its figures: a table saved before a note was written still reads the
    same."""
    if isinstance(value, dict):
        return {k: readings(v) for k, v in value.items() if k not in NOTES}
    if isinstance(value, list):
        return [readings(v) for v in value]
    return value


def runs_keeping(runs: list[dict], keep) -> list[dict]:
    """The pooled readings' runs with only the rows `keep(row)` accepts; a run left with none is dropped."""
    runs = [run | {"rows": [r for r in run["rows"] if keep(r)]} for run in runs]
    return [run for run in runs if run["rows"]]


def same(a, b) -> bool:
    """Equal, numbers to within TOLERANCE (bools and everything else exactly)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, **TOLERANCE)
    return a == b


def repo_root(record: dict) -> str:
    """The repository a record was measured in: its model source is <root>/trainer/testbed/model."""
    source = record["report"]["model"]["source"]
    marker = "/trainer/testbed/"
    return source[:source.index(marker)] if marker in source else ""


def portable(value, root: str):
    """The value with the repository's path set aside, so clones in other folders compare alike."""
    text = json.dumps(value, sort_keys=True, default=str)
    return json.loads(text.replace(json.dumps(root)[1:-1], "<repo>") if root else text)


def controls_only(attacks: dict) -> dict:
    """The attacks with their per-method findings cut to the controls (each row's own are what it measured)."""
    out = copy.deepcopy(attacks)
    for attack in out.values():
        per_method = attack.get("info", {}).get("per_method")
        if per_method is not None:
            attack["info"]["per_method"] = {k: v for k, v in per_method.items() if k in CONTROLS}
    return out


def measurement(record: dict) -> dict:
    """Everything that must be equal between two runs for their rows to share a table."""
    report, root = record["report"], repo_root(record)
    settings = {k: v for k, v in report["settings"].items() if k not in PER_RUN_SETTINGS}
    return portable({**{k: record.get(k) for k in SAME},
                     "settings": settings, "sampling": report["sampling"],
                     "unrelated_prompts": report["unrelated_prompts"], "attacks": controls_only(report["attacks"]),
                     "skipped_attacks": report.get("skipped_attacks"), "quality": report.get("quality"),
                     **{f"{name} readings": readings(report["results"].get(name)) for name in CONTROLS},
                     **{f"{name} colour readings": record["close_concept_and_agreement"].get(name)
                        for name in CONTROLS}}, root)


def recipe_problems(kept_recipes: dict[str, bool | None]) -> list[str]:
    """kept_recipes: for each adapter row of the saved table not measured again, whether the recipe it plans now is
    the one it was measured with (None: no longer a row of the table)."""
    return ([f"{row} plans another recipe than it was measured with" for row, kept in kept_recipes.items()
             if kept is False]
            + [f"{row} is no longer a row of the table" for row, kept in kept_recipes.items() if kept is None])


def measurement_problems(saved: dict, fresh: dict) -> list[str]:
    """What `fresh` measured otherwise than `saved` (both JSON records); empty when its rows can join the table."""
    before, now = measurement(saved), measurement(fresh)
    return [f"{key} differ from the saved table's" for key in before if not same(before[key], now.get(key))]


def merged(saved: dict, fresh: dict, rows: list[str], order: list[str], when: str,
           described: dict[str, str] | None = None) -> dict:
    """The saved record with `rows` as `fresh` measured them, methods in `order` (names not in it keep their place
    after it), and this run listed under "updates". `described`: the rows' descriptions as planned now, which kept
    rows take too (their recipe is checked to be the one measured, but its words may name a preset since moved)."""
    out = copy.deepcopy(saved)
    out["rows"] |= {row: what for row, what in (described or {}).items() if row in out["rows"]}
    report, new = out["report"], fresh["report"]
    pooled = out.get("pooled_readings", {})
    if "runs" in pooled:  # a row's pooled reading came from the adapter measured before: table_pooled.py reads it again
        pooled["runs"] = runs_keeping(pooled["runs"], lambda r: r not in rows)
    for row in rows:
        pooled.get("rows", {}).pop(row, None)
        report["results"][row] = new["results"][row]
        out["close_concept_and_agreement"][row] = fresh["close_concept_and_agreement"][row]
        out["rows"][row] = fresh["rows"][row]
        if row in fresh["train_seconds"]:
            out["train_seconds"][row] = fresh["train_seconds"][row]
        for name, attack in report["attacks"].items():
            per_method = attack.get("info", {}).get("per_method")
            if per_method is not None:
                per_method[row] = new["attacks"][name]["info"]["per_method"][row]
    methods = {m["name"]: m for m in report["methods"]} | {m["name"]: m for m in new["methods"] if m["name"] in rows}
    names = [n for n in order if n in methods] + [n for n in methods if n not in order]
    report["methods"] = [methods[n] for n in names]
    report["settings"]["adapters"] = [m["adapter"] for m in report["methods"] if m.get("adapter")]
    for key, held in (("results", report), ("close_concept_and_agreement", out), ("rows", out)):
        held[key] = {n: held[key][n] for n in names if n in held[key]}  # the tables list them in this order
    out.setdefault("updates", []).append({"rows": list(rows), "date": when, "command": fresh["command"],
                                          "seconds": fresh["seconds"]})
    return out


# an attack's settings in `duo-unlearn eval`'s config: the fields a re-attack may change
ATTACK_SETTINGS = {"unlearndiffatk": "udatk_", "concept_inversion": "ci_", "ring_a_bell": "rab_"}


def attack_measurement_problems(saved: dict, fresh_report: dict, rows: list[str]) -> dict[str, list[str]]:
    """What a run that measured one attack again read otherwise than the saved table, besides that attack, per row
    it measured ("": the run as a whole). A row must read its direct prompts and unrelated prompts as saved: the same
    adapter, drawn the same way; the controls (CONTROLS) reading as saved say the machine draws the same."""
    before = portable(saved["report"], repo_root(saved))
    now = portable(fresh_report, repo_root({"report": fresh_report}))
    problems = {"": [f"{key} differ from the saved table's" for key in ("sampling", "unrelated_prompts")
                     if not same(before[key], now[key])]}
    for row in rows:
        old, new = before["results"][row], now["results"][row]
        problems[row] = [f"{row}'s {what} differ from the saved table's" for what, a, b in (
            ("direct readings", old["attacks"]["direct"], new["attacks"]["direct"]),
            ("unrelated-prompt readings", old["preservation"], new["preservation"])) if not same(a, b)]
    return {k: v for k, v in problems.items() if v}


def attack_merged(saved: dict, fresh_report: dict, attack: str, rows: list[str], kept: dict[str, str], when: str,
                  command: str, seconds: float) -> dict:
    """The saved record with `attack` as `fresh_report` measured it on `rows`; `kept`: the rows not measured again
    and why, which keep the reading they had, named in "attack_updates"."""
    out = copy.deepcopy(saved)
    report = out["report"]
    for row in rows:
        report["results"][row]["attacks"][attack] = fresh_report["results"][row]["attacks"][attack]
    info = report["attacks"][attack]
    fresh_info = fresh_report["attacks"][attack]
    info["settings"] = fresh_info["settings"]
    per_method = info.get("info", {}).get("per_method")
    if per_method is not None:
        per_method |= {row: fresh_info["info"]["per_method"][row] for row in rows}
    prefix = ATTACK_SETTINGS[attack]
    report["settings"] = {k: v for k, v in report["settings"].items() if not k.startswith(prefix)} | {
        k: v for k, v in fresh_report["settings"].items() if k.startswith(prefix)}
    out.setdefault("attack_updates", []).append({"attack": attack, "rows": list(rows), "kept_as_before": dict(kept),
                                                 "date": when, "command": command, "seconds": seconds})
    return out
