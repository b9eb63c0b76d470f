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
    kept = next(name for name in saved["rows"] if name not in ("base", "negative prompt", ROW))
    out = update.merged(saved, fresh, [ROW], order, "2026-12-07", {kept: "its recipe, described as planned now",
                                                                   "duo_not_in_the_table": "not added by words"})

    assert out["report"]["results"][ROW]["preservation"]["one_minus_lpips"] == 0.5
    assert out["rows"][kept] == "its recipe, described as planned now" and "duo_not_in_the_table" not in out["rows"]
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
    assert not table.recorded_recipe(facts[ROW], replace(plans[ROW], lam_retain=plans[ROW].lam_retain + 1))
    assert update.recipe_problems({ROW: False, "duo_gone": None}) == [
        f"{ROW} plans another recipe than it was measured with", "duo_gone is no longer a row of the table"]


def test_a_note_beside_a_figure_is_not_a_reading(saved):
    """A run made after `duo-unlearn eval` began to keep a caveat beside a FID read on few images still reads as
    the table saved before it; the figure itself must still agree."""
    update = benchmark("table_update")
    fresh = a_run_measuring(saved, [ROW])
    for name in ("base", "negative prompt"):
        fresh["report"]["results"][name]["quality"]["fid"]["caveat"] = "FID from 16 images per method"
    assert update.measurement_problems(saved, fresh) == []
    fresh["report"]["results"]["base"]["quality"]["fid"]["value"] *= 1.01
    assert update.measurement_problems(saved, fresh) == ["base readings differ from the saved table's"]


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


def test_pooled_readings_sum_image_counts_over_the_seed_sets_and_ratios_divide_by_the_base_models():
    pooled = benchmark("table_pooled")
    keys = {"background_kept", "background_right_kept", "shape_kept", "colour_kept", "concept_background_kept",
            "concept_shape_kept", "concept_erased"}

    def reading(orange, shapes, background, right_n, **rest):
        return ({k: rest.get(k, 1.0) for k in keys} | {"orange_accuracy": orange, "orange_n": 36, "others_n": 180,
                                                       "shape_accuracy": shapes, "background_kept": background,
                                                       "background_right_n": right_n, "concept_n": 36})
    base = [reading(32 / 36, 138 / 180, 1.0, 130), reading(30 / 36, 150 / 180, 1.0, 140)]
    now = [reading(34 / 36, 127 / 180, 174 / 180, 130, background_right_kept=125 / 130, concept_erased=32 / 36),
           reading(27 / 36, 150 / 180, 171 / 180, 140, background_right_kept=140 / 140, concept_erased=35 / 36)]
    got = pooled.pool(now, base)
    assert got["concept_erased"] == pytest.approx(67 / 72) and got["concept_erased_count"] == [67, 72]
    assert got["orange_vs_base"] == pytest.approx(61 / 62) and got["orange_vs_base_count"] == [61, 62]
    # the ratio of the sums, not the mean of the two sets' ratios (0.920 and 1.000)
    assert got["shape_accuracy_vs_base"] == pytest.approx(277 / 288)
    assert got["shape_accuracy_vs_base_count"] == [277, 288]
    assert got["background_kept"] == pytest.approx(345 / 360) and got["background_kept_count"] == [345, 360]
    assert got["background_right_kept"] == pytest.approx(265 / 270)  # weighed by each set's own count
    assert pooled.pool(base, base)["shape_accuracy_vs_base"] == 1.0


def test_the_table_shows_its_pooled_readings_and_a_row_measured_again_drops_its_own(saved):
    pooled, update, table = benchmark("table_pooled"), benchmark("table_update"), benchmark("efficacy_testbed")
    record = copy.deepcopy(saved)
    one = {"orange_accuracy": 0.75, "orange_n": 36, "shape_accuracy": 0.75, "others_n": 180, "background_right_n": 130,
           "concept_n": 36,
           **{r.key: 0.96 for r in benchmark("colour_readings").READINGS if not r.share}}
    low = one | {"shape_accuracy": 0.70, "background_kept": 0.90, "orange_accuracy": 0.5}
    rows = {"base": [one, one], "negative prompt": [one, one], ROW: [one, low], "esd": [low, low]}
    record["pooled_readings"] = {
        "seed_sets": [0, 1000], "torch": "x", "threads": 2,
        "runs": [{"rows": [ROW], "command": "python benchmarks/table_pooled.py", "date": "2026-12-07",
                  "seconds": {"total": 600.0}},
                 {"rows": ["esd"], "command": "python benchmarks/table_pooled.py --rows esd", "date": "2026-12-08",
                  "seconds": {"total": 300.0}}],
        "rows": {name: {"per_set": sets, "pooled": pooled.pool(sets, rows["base"])} for name, sets in rows.items()}}
    text = table.markdown(record)
    section = text[text.index("### Colour readings pooled over 2 sets"):text.index("## Rows and settings")]
    assert f"| {ROW} | 0.833 (45 / 54) | 0.930 (335 / 360) |" in section
    assert "0.967 (261 / 270)" in section  # shapes read right over the two sets, against the base model's
    assert (f"- {ROW}, pooled: orange kept (÷ base) 0.833 (< 0.95: 45 of 54, 52 would meet it); background kept 0.930 (< "
            "0.95: 335 of 360, 342 would meet it); shape accuracy ÷ base 0.967 (≥ 0.95: 261 of 270, 257 would meet "
            "it); red prompts: red erased 0.960 (≥ 0.95: 69 of 72, 69 would meet it)") in section
    assert "- base, pooled" not in section and "- negative prompt, pooled" not in section
    assert "- esd, pooled" not in section  # the targets are DUO's
    assert (f"(`{ROW}`: `python benchmarks/table_pooled.py`, 2026-12-07, 10 minutes; `esd`: `python "
            "benchmarks/table_pooled.py --rows esd`, 2026-12-08, 5 minutes;") in section

    fresh = a_run_measuring(saved, [ROW])
    out = update.merged(record, fresh, [ROW], ["base", "negative prompt", *saved["rows"]], "2026-12-07")
    assert list(out["pooled_readings"]["rows"]) == ["base", "negative prompt", "esd"]  # its adapter measured again
    assert [run["rows"] for run in out["pooled_readings"]["runs"]] == [["esd"]]  # a run with no row left goes
    assert ROW in record["pooled_readings"]["rows"]


def test_pooled_readings_refuse_a_row_the_table_lacks_and_seed_sets_without_the_tables():
    pooled = benchmark("table_pooled")
    with pytest.raises(SystemExit):
        pooled.main(["--rows", "duo_nowhere"])
    with pytest.raises(SystemExit):
        pooled.main(["--seed-sets", "1000,2000"])
    with pytest.raises(SystemExit):
        pooled.main(["--seed-sets", "0,x"])
    with pytest.raises(SystemExit):
        pooled.main(["--seed-sets", "0,1000,1000"])  # a set counted twice would weigh its images twice


def test_a_row_whose_adapter_no_timed_run_trained_shows_no_training_time(saved):
    table = benchmark("efficacy_testbed")
    record = copy.deepcopy(saved)
    record["train_seconds"].pop(ROW, None)
    record["train_seconds"]["esd"] = 12.4
    lines = {}
    for line in table.markdown(record).splitlines():  # the efficacy table's row: the first (the pooled table follows)
        if line.startswith("| "):
            lines.setdefault(line.split(" | ")[0], line)
    assert lines[f"| {ROW}"].endswith("| – |") and lines["| base"].endswith("| – |")
    assert lines["| esd"].endswith("| 12 |")


def a_reattack(saved: dict, rows: list[str]) -> dict:
    """The report `reattack_testbed.py` would get on the same machine: `rows` with their direct and unlearndiffatk
    readings as saved, the attack's settings as the code has them now."""
    report = copy.deepcopy(saved["report"])
    report["methods"] = [m for m in report["methods"] if m["name"] in rows]
    report["results"] = {k: {"attacks": {a: v["attacks"][a] for a in ("direct", "unlearndiffatk")},
                             "preservation": v["preservation"]} for k, v in report["results"].items() if k in rows}
    report["attacks"] = {"unlearndiffatk": copy.deepcopy(report["attacks"]["unlearndiffatk"])}
    per_method = report["attacks"]["unlearndiffatk"]["info"]["per_method"]
    report["attacks"]["unlearndiffatk"]["info"]["per_method"] = {k: v for k, v in per_method.items() if k in rows}
    report["settings"] |= {"attacks": ["direct", "unlearndiffatk"], "udatk_check_every": 20}
    return report


def test_an_attack_measured_again_replaces_its_cells_only_where_the_rows_read_as_saved(saved):
    update, table = benchmark("table_update"), benchmark("efficacy_testbed")
    rows = ["base", "negative prompt", ROW]
    fresh = a_reattack(saved, rows)
    assert update.attack_measurement_problems(saved, fresh, rows) == {}
    cell = fresh["results"][ROW]["attacks"]["unlearndiffatk"]
    cell |= {"dsr": 0.875, "found": 3, "checks": []}
    fresh["attacks"]["unlearndiffatk"]["info"]["per_method"][ROW] = [{"found": "a new prompt"}]
    fresh["attacks"]["unlearndiffatk"]["settings"]["checks_after_steps"] = [20, 40, 60, 80, 100]
    kept = [n for n in saved["report"]["results"] if n not in rows]
    why = "its adapter is not on this machine"
    out = update.attack_merged(saved, fresh, "unlearndiffatk", rows, {"oracle_relabelled": why}, "2026-12-07",
                               "python benchmarks/reattack_testbed.py --attack unlearndiffatk", 1234.0)

    assert out["report"]["results"][ROW]["attacks"]["unlearndiffatk"]["dsr"] == 0.875
    assert out["report"]["attacks"]["unlearndiffatk"]["info"]["per_method"][ROW] == [{"found": "a new prompt"}]
    assert out["report"]["settings"]["udatk_check_every"] == 20
    assert out["report"]["settings"]["attacks"] == saved["report"]["settings"]["attacks"]  # the table's, all five
    for name in kept:
        assert out["report"]["results"][name] == saved["report"]["results"][name]
    for name in rows:  # every other attack, the preservation and the colour readings as saved
        before, after = saved["report"]["results"][name], out["report"]["results"][name]
        assert {k: v for k, v in after["attacks"].items() if k != "unlearndiffatk"} == \
            {k: v for k, v in before["attacks"].items() if k != "unlearndiffatk"}
        assert after["preservation"] == before["preservation"]
    assert out["close_concept_and_agreement"] == saved["close_concept_and_agreement"]
    assert out["attack_updates"][-1]["kept_as_before"] == {"oracle_relabelled": why}
    text = table.markdown(out)
    assert "reattack_testbed.py" in text and f"`oracle_relabelled` kept as measured before: {why}" in text
    assert "after steps 20, 40, 60, 80, 100" in text
    row_line = next(line for line in text.splitlines() if line.startswith(f"| {ROW} |"))
    assert row_line.split(" | ")[5] == "0.875"  # the UnlearnDiffAtk column

    # a row that draws its direct prompts or its unrelated prompts otherwise is another adapter, or another machine
    fresh["results"][ROW]["attacks"]["direct"]["scores"][0] = 0.9
    fresh["results"]["base"]["preservation"]["one_minus_lpips"] = 0.5
    fresh["unrelated_prompts"] = fresh["unrelated_prompts"][::-1]
    assert update.attack_measurement_problems(saved, fresh, rows) == {
        "": ["unrelated_prompts differ from the saved table's"],
        "base": ["base's unrelated-prompt readings differ from the saved table's"],
        ROW: [f"{ROW}'s direct readings differ from the saved table's"]}


def test_an_attack_is_measured_again_only_on_the_adapters_the_table_measured(tmp_path, capsys):
    from test_unlearn_diff_atk import _random_adapter

    work = tmp_path / "work"
    work.mkdir()
    _random_adapter(work / "duo_v1.safetensors")  # a LoRA, but not the one the table's duo_v1 row was trained as
    reattack = benchmark("reattack_testbed")
    with pytest.raises(SystemExit) as e:
        reattack.main(["--attack", "unlearndiffatk", "--work", str(work), "--results", str(tmp_path / "R.md")])
    assert e.value.code == 2 and "is not the adapter the table measured as duo_v1" in capsys.readouterr().err
    (work / "duo_v1.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SystemExit) as e:
        reattack.main(["--attack", "unlearndiffatk", "--work", str(work), "--results", str(tmp_path / "R.md")])
    assert e.value.code == 2 and "duo_v1.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "R.md").exists()
