"""Putting rows measured again into the saved efficacy table (benchmarks/table_update.py), on the committed record:
a run whose controls read as saved may replace its rows and nothing else; any other run is refused."""
from __future__ import annotations

import copy
import json

import pytest

from test_testbed import BENCHMARKS, benchmark

ROW = "duo_preset"


@pytest.fixture(scope="module")
def saved():
    return json.loads((BENCHMARKS / "efficacy_testbed.json").read_text())


def a_run_measuring(saved: dict, rows: list[str], root: str | None = None) -> dict:
    """The record an `--update` run of `rows` would make on the same machine: the controls and those rows as saved,
    in a clone at `root` when given."""
    keep = ["base", "negative prompt", *rows]
    fresh = copy.deepcopy(saved)
    report = fresh["report"]
    report["methods"] = [m for m in report["methods"] if m["name"] in keep]
    report["settings"]["adapters"] = [m["adapter"] for m in report["methods"] if m["adapter"]]
    report["results"] = {k: v for k, v in report["results"].items() if k in keep}
    for attack in report["attacks"].values():
        per_method = attack.get("info", {}).get("per_method")
        if per_method is not None:
            attack["info"]["per_method"] = {k: v for k, v in per_method.items() if k in keep}
    fresh["close_concept_and_agreement"] = {k: v for k, v in fresh["close_concept_and_agreement"].items()
                                            if k in keep}
    fresh["rows"] = {k: v for k, v in fresh["rows"].items() if k in keep}
    fresh["command"] = "python benchmarks/efficacy_testbed.py --update " + ",".join(rows)
    fresh["seconds"] = {"eval": 600.0, "close": 60.0, "total": 900.0}
    if root is not None:
        old = benchmark("table_update").repo_root(saved)
        fresh = json.loads(json.dumps(fresh).replace(old, root))
    return fresh


def test_a_run_of_the_same_measurement_in_another_clone_may_join(saved):
    update = benchmark("table_update")
    fresh = a_run_measuring(saved, [ROW], root="/elsewhere/clone")
    assert update.repo_root(fresh) == "/elsewhere/clone"
    assert update.measurement_problems(saved, fresh) == []


@pytest.mark.parametrize("change, named", [
    (lambda r: r["report"]["results"]["base"]["attacks"]["direct"]["scores"].__setitem__(0, 0.5), "base readings"),
    (lambda r: r["close_concept_and_agreement"]["negative prompt"].__setitem__("orange_vs_base", 0.9),
     "negative prompt colour readings"),
    (lambda r: r.__setitem__("torch", "2.99.0"), "torch"),
    (lambda r: r.__setitem__("threads", 16), "threads"),
    (lambda r: r["report"]["settings"].__setitem__("images_per_prompt", 8), "settings"),
    (lambda r: r["report"]["attacks"]["ring_a_bell"]["prompts"].reverse(), "attacks"),
    (lambda r: r["report"]["attacks"]["concept_inversion"]["info"]["per_method"]["base"].__setitem__(
        "eval_loss_after", 1.0), "attacks"),
])
def test_a_run_that_measured_otherwise_is_refused_and_says_where(saved, change, named):
    update = benchmark("table_update")
    fresh = a_run_measuring(saved, [ROW])
    change(fresh)
    assert update.measurement_problems(saved, fresh) == [f"{named} differ from the saved table's"]


def test_the_rows_own_findings_are_not_part_of_the_measurement(saved):
    update = benchmark("table_update")
    fresh = a_run_measuring(saved, [ROW])
    fresh["report"]["results"][ROW]["attacks"]["direct"]["dsr"] = 0.5
    fresh["report"]["attacks"]["unlearndiffatk"]["info"]["per_method"][ROW] = []
    assert update.measurement_problems(saved, fresh) == []


def test_merging_replaces_the_rows_measured_and_keeps_every_other(saved):
    update, table = benchmark("table_update"), benchmark("efficacy_testbed")
    fresh = a_run_measuring(saved, [ROW])
    fresh["report"]["results"][ROW]["preservation"]["one_minus_lpips"] = 0.5
    fresh["close_concept_and_agreement"][ROW]["orange_vs_base"] = 0.123
    fresh["report"]["attacks"]["concept_inversion"]["info"]["per_method"][ROW]["eval_loss_after"] = 9.0
    fresh["rows"][ROW] = "the preset, measured again"
    fresh["train_seconds"] = {ROW: 42.0}
    order = ["base", "negative prompt", *saved["rows"]]
    out = update.merged(saved, fresh, [ROW], order, "2026-12-07")

    assert out["report"]["results"][ROW]["preservation"]["one_minus_lpips"] == 0.5
    assert out["close_concept_and_agreement"][ROW]["orange_vs_base"] == 0.123
    assert out["report"]["attacks"]["concept_inversion"]["info"]["per_method"][ROW]["eval_loss_after"] == 9.0
    assert out["rows"][ROW] == "the preset, measured again" and out["train_seconds"][ROW] == 42.0
    for name in saved["report"]["results"]:
        if name != ROW:
            assert out["report"]["results"][name] == saved["report"]["results"][name]
            assert out["close_concept_and_agreement"][name] == saved["close_concept_and_agreement"][name]
    assert [m["name"] for m in out["report"]["methods"]] == [m["name"] for m in saved["report"]["methods"]]
    assert list(out["report"]["results"]) == list(saved["report"]["results"])
    assert out["report"]["settings"]["adapters"] == saved["report"]["settings"]["adapters"]
    assert out["updates"] == saved.get("updates", []) + [{"rows": [ROW], "date": "2026-12-07",
                                                          "command": fresh["command"], "seconds": fresh["seconds"]}]
    assert saved["report"]["results"][ROW]["preservation"]["one_minus_lpips"] != 0.5  # the saved one untouched

    text = table.markdown(out)
    assert "`--update`" in text and "`duo_preset`" in text and "efficacy_testbed_grid_direct_update.png" in text
    assert "0.500" in text.split("## Rows and settings")[0]


def test_every_row_of_the_committed_table_still_plans_the_recipe_it_was_measured_with(saved):
    """What `--update` checks of the rows it keeps; and a row whose recipe moved is caught."""
    from dataclasses import replace

    from duo_unlearn.trainer.unlearn import UnlearnConfig, plan

    update, table = benchmark("table_update"), benchmark("efficacy_testbed")
    facts = {m["name"]: m["facts"] for m in saved["report"]["methods"] if m["kind"] == "adapter"}
    plans = {name: plan(UnlearnConfig(preset="testbed-red", model="testbed", out=f"{name}.safetensors", seed=0,
                                      **kw))[1][0].train for name, _, kw in table.variants(["500"])}
    kept = {name: table.recorded_recipe(f, plans[name]) if name in plans else None for name, f in facts.items()
            if "oracle" not in f}
    assert kept and update.recipe_problems(kept) == []
    assert not table.recorded_recipe(facts[ROW], replace(plans[ROW], lam_retain=2.5))
    assert update.recipe_problems({ROW: False, "duo_gone": None}) == [
        f"{ROW} plans another recipe than it was measured with", "duo_gone is no longer a row of the table"]


def test_float_rounding_between_two_runs_is_the_same_measurement(saved):
    """Two runs on this CPU differ in the 6th to 7th digit (FID 457.4248 and 457.4293): still the same; a count or
    a found prompt that differs, or a score off by more than rounding, is not."""
    update = benchmark("table_update")

    def nudged(value):
        if isinstance(value, dict):
            return {k: nudged(v) for k, v in value.items()}
        if isinstance(value, list):
            return [nudged(v) for v in value]
        return value * (1 + 1e-5) if isinstance(value, float) else value

    fresh = a_run_measuring(saved, [ROW])
    fresh["report"] = nudged(fresh["report"])
    assert update.measurement_problems(saved, fresh) == []
    assert update.same(0.0004, 0.0003) and not update.same(0.0004, 0.0006) and not update.same(3, 4)
    assert not update.same(True, 1) and not update.same([1.0], [1.0, 2.0]) and not update.same({"a": 1}, {"b": 1})
