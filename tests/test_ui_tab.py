"""The tab's behaviour through TabController on a tiny model: bad input, a real run, cancel, a second click,
and the comparison with adapters stacked by diffusers."""
import threading
import time

import numpy as np
import pytest
from safetensors import safe_open

from duo_unlearn.extension.backends import StandaloneBackend
from duo_unlearn.extension.jobs import Busy
from duo_unlearn.extension.tab import NONE, TabController, build_tab
from duo_unlearn.trainer.errors import UserError


def inputs(model_path, **over):
    """The "Unlearn concept" inputs in their order, with tiny settings."""
    values = dict(model=str(model_path), preset="testbed-red", concept="red", unsafe="a red square",
                  safe="a blue square", num_pairs=2, beta=500, steps=3, rank=2, out_name="duo_red", strength=None,
                  lr=0.05, seed=0, batch_pairs=2, detector="none", preview=True, overwrite=False, config_dir="")
    values.update(over)
    return list(values.values())


@pytest.fixture()
def ctl(tmp_path, tiny_model):
    return TabController(StandaloneBackend(tmp_path / "Lora", model=str(tiny_model)))


def written(ctl):
    folder = ctl.backend.lora_dir
    return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.exists() else []


@pytest.mark.parametrize("case, message", [
    ("custom_empty", "Unsafe prompts are empty"), ("safe_empty", "Safe prompts are empty"),
    ("escape", "points into another folder"), ("abs", "points into another folder"), ("no_name", "name is empty"),
    ("pairs", "Number of pairs must be a whole number"), ("beta", "positive number"), ("steps", "Steps must be"),
    ("model", "model not found"), ("preset", "Choose a preset"),
])
def test_bad_input_gives_a_message_and_writes_nothing(ctl, tiny_model, tmp_path, case, message):
    over = {"custom_empty": dict(preset="custom", concept="custom", unsafe="", safe=""),
            "safe_empty": dict(safe="  \n "), "escape": dict(out_name="../x"), "abs": dict(out_name="/tmp/x"),
            "no_name": dict(out_name=" "), "pairs": dict(num_pairs=1.5), "beta": dict(beta=-1),
            "steps": dict(steps=0), "model": dict(model=str(tmp_path / "nope")), "preset": dict(preset="nope")}[case]
    with pytest.raises(UserError, match=message):
        ctl.start(*inputs(tiny_model, **over))
    assert ctl.backend.runner.job is None
    assert written(ctl) == [] and not (tmp_path / "x.safetensors").exists()


RUNTIME = ["auto", "auto", "auto", 0, 0]  # device, precision, checkpointing, resolution, micro-batch: defaults


def retain_of(req):
    plan = req.plans[0]
    return plan.pairs.retain_prompts, plan.pairs.num_retain, plan.train.lam_retain


def test_retain_fields_reach_the_plan_and_blank_means_the_preset(ctl, tiny_model):
    from duo_unlearn.trainer.presets import get_preset

    preset = get_preset("testbed-red").for_family("sd1")
    assert preset.num_retain and preset.lam_retain != 0.5  # else this test shows nothing
    assert retain_of(ctl.build_request(*inputs(tiny_model), *RUNTIME, "", " ", "")) == \
        (preset.retain_prompts, preset.num_retain, preset.lam_retain)
    mine = ctl.build_request(*inputs(tiny_model), *RUNTIME, "a orange square\n\n a blue circle ", " 6 ", "0.5")
    assert retain_of(mine) == (("a orange square", "a blue circle"), 6, 0.5)
    off = ctl.build_request(*inputs(tiny_model), *RUNTIME, "", "0", "")
    assert retain_of(off)[1:] == (0, 0.0)  # no retain set: its weight goes with it
    assert off.cfg.pairs_dir != mine.cfg.pairs_dir  # other retain settings: other pairs, not a resume


def test_twin_negative_field_reaches_the_pairs_and_blank_means_the_preset(ctl, tiny_model):
    from duo_unlearn.trainer.presets import get_preset

    blank = ctl.build_request(*inputs(tiny_model), *RUNTIME, twin_negative=" ")
    assert blank.plans[0].pairs.twin_negative == get_preset("testbed-red").for_family("sd1").twin_negative
    mine = ctl.build_request(*inputs(tiny_model), *RUNTIME, twin_negative=" no {unsafe} ")
    assert mine.plans[0].pairs.twin_negative_for(0) == "no a red square"
    assert mine.cfg.pairs_dir != blank.cfg.pairs_dir  # twins of another negative: other pairs, not a resume


def test_direction_fields_reach_the_plan_and_blank_means_the_preset(ctl, tiny_model):
    from duo_unlearn.trainer.presets import get_preset

    preset = get_preset("testbed-red").for_family("sd1")
    assert preset.concept_directions and preset.close_weight  # else this test shows nothing
    blank = ctl.build_request(*inputs(tiny_model), *RUNTIME, "", "", "", "constant", 0, "", "", "").plans[0].train
    assert (blank.concept_directions, blank.close_concepts, blank.close_weight) == \
        (preset.concept_directions, preset.close_concepts, preset.close_weight)
    mine = ctl.build_request(*inputs(tiny_model), *RUNTIME, "", "", "", "constant", 0, " 8 ", "orange, yellow",
                             "2").plans[0].train
    assert (mine.concept_directions, mine.close_concepts, mine.close_weight) == (8, ("orange", "yellow"), 2.0)
    off = ctl.build_request(*inputs(tiny_model), *RUNTIME, "", "", "", "constant", 0, "0", "", "").plans[0].train
    assert (off.concept_directions, off.close_concepts, off.close_weight) == (0, (), 0.0)
    for text, setting in ((" Auto ", "auto"), ("0.5", 0.5), ("24.0", 24)):
        train = ctl.build_request(*inputs(tiny_model), *RUNTIME, "", "", "", "constant", 0, text, "", "").plans[0].train
        assert train.concept_directions == setting and type(train.concept_directions) is type(setting)


@pytest.mark.parametrize("n, directions, close, weight, message", [
    ("", "-1", "", "", "Concept directions must be auto, a whole number of at least 0 or a share between 0 and 1 "
                       ".of each layer's inputs., got '-1'"),
    ("", "many", "", "", "Concept directions must be auto, a whole number .* got 'many'"),
    ("", "1.5", "", "", "Concept directions must be auto, a whole number .* got '1.5'"),
    ("", "nan", "", "", "Concept directions must be auto, a whole number .* got 'nan'"),
    ("", "", "", "-1", "Close weight must be 0 or positive"),
    ("", "", "crimson", "", "no retain prompt names a close concept .crimson."),
    ("0", "8", "", "", "Concept directions need retain images"),
])
def test_bad_direction_fields_give_a_message_and_write_nothing(ctl, tiny_model, n, directions, close, weight,
                                                               message):
    with pytest.raises(UserError, match=message):
        ctl.start(*inputs(tiny_model), *RUNTIME, "", n, "", "constant", 0, directions, close, weight)
    assert ctl.backend.runner.job is None and written(ctl) == []


@pytest.mark.parametrize("preset, retain, n, lam, message", [
    ("testbed-red", "", "-1", "", "Retain images must be a whole number of at least 0"),
    ("testbed-red", "", "many", "", "Retain images must be a whole number"),
    ("testbed-red", "", "", "-1", "Retain weight must be 0 .off. or positive"),
    ("testbed-red", "", "", "x", "Retain weight must be a number"),
    ("custom", "", "4", "", "Retain images need retain prompts"),
    ("testbed-red", "", "0", "1", "A retain weight needs retain images"),
    ("custom", "a orange square", "", "1", "A retain weight needs retain images"),
])
def test_bad_retain_fields_give_a_message_and_write_nothing(ctl, tiny_model, preset, retain, n, lam, message):
    over = dict(preset=preset, concept="custom") if preset == "custom" else {}
    with pytest.raises(UserError, match=message):
        ctl.start(*inputs(tiny_model, **over), *RUNTIME, retain, n, lam)
    assert ctl.backend.runner.job is None and written(ctl) == []


def test_preset_prompts_are_used_when_left_as_shown(ctl, tiny_model):
    choices, concept, unsafe, safe, pairs, beta, _ = ctl.preset_fields("testbed-red")
    req = ctl.build_request(*inputs(tiny_model, unsafe=unsafe, safe=safe))
    assert req.cfg.unsafe_prompts == () and req.cfg.concept == "red"  # the preset decides
    req = ctl.build_request(*inputs(tiny_model))  # edited prompts: custom, named after the concept
    assert req.cfg.unsafe_prompts == ("a red square",) and req.cfg.concept == "red"
    assert ctl.concept_choices("violence")[0] == "(all concepts)"
    req = ctl.build_request(*inputs(tiny_model, preset="violence", concept="(all concepts)", unsafe="", safe=""))
    assert [p.name for p in req.outputs] == [f"duo_red_{c}.safetensors" for c in ("blood", "suffering", "gun",
                                                                                    "horror")]
    assert all(p.parent == ctl.backend.lora_dir.resolve() for p in req.outputs)
    assert str(ctl.backend.work_dir) in req.cfg.pairs_dir


def run_to_end(ctl, *args):
    job = ctl.start(*args)
    frames = list(ctl.watch(job, poll=0.05))
    return job, frames


@pytest.mark.slow
def test_unlearn_then_compare_end_to_end(ctl, tiny_model):
    job, frames = run_to_end(ctl, *inputs(tiny_model))
    assert job.state == "done", job.error
    status, bar, sheet, preview, finished = frames[-1]
    assert finished and status.startswith("**Done**") and "duo_red.safetensors" in status
    assert 'data-state="done"' in bar and "width:100.0%" in bar
    assert any(f[2] is not None for f in frames), "the contact sheet was never shown"
    assert preview is not None and preview.width > 128
    adapter = ctl.backend.lora_dir / "duo_red.safetensors"
    assert written(ctl) == ["duo_red.preview.png", "duo_red.safetensors"]
    with safe_open(str(adapter), "pt") as f:
        meta = f.metadata()
        assert all(k.startswith("lora_unet_") for k in f.keys())
    assert meta["duo.concept"] == "red" and meta["duo.steps"] == "3" and meta["ss_network_dim"] == "2"
    assert "duo_red" in ctl.adapter_names() and "| duo_red | red | 500" in ctl.adapter_table()

    slots = ["duo_red", 1.0, NONE, 1.0, NONE, 1.0, NONE, 1.0]
    base, adapted, note = ctl.compare(str(tiny_model), "a red square", "", 0, 8, 5.0, *slots)
    base0, off, _ = ctl.compare(str(tiny_model), "a red square", "", 0, 8, 5.0, "duo_red", 0.0, *slots[2:])
    a, b, o = (np.asarray(x, dtype=np.int16) for x in (base, adapted, off))
    assert np.array_equal(a, np.asarray(base0, dtype=np.int16)), "same seed, same base image"
    assert np.abs(a - b).max() > 2, "the adapter changed nothing"
    assert np.abs(a - o).max() <= 1, "weight 0 should be the base model"
    assert "duo_red×1" in note
    assert not getattr(ctl.backend.load(str(tiny_model)).pipe.unet, "peft_config", None), "adapters left loaded"

    # the same name again: refused unless Overwrite is ticked; then a second adapter trains on the clean model
    with pytest.raises(UserError, match="already exists"):
        ctl.start(*inputs(tiny_model))
    job, _ = run_to_end(ctl, *inputs(tiny_model, out_name="duo_red_2", preview=False))
    assert job.state == "done", job.error
    base2, both, _ = ctl.compare(str(tiny_model), "a red square", "", 0, 8, 5.0, "duo_red", 1.0, "duo_red_2", 0.5,
                                 NONE, 1, NONE, 1)
    assert np.array_equal(np.asarray(base2), np.asarray(base))
    with pytest.raises(UserError, match="picked twice"):
        ctl.compare(str(tiny_model), "x", "", 0, 8, 5.0, "duo_red", 1.0, "duo_red", 1.0, NONE, 1, NONE, 1)
    with pytest.raises(UserError, match="at least one adapter"):
        ctl.compare(str(tiny_model), "x", "", 0, 8, 5.0, NONE, 1.0, NONE, 1.0, NONE, 1, NONE, 1)


@pytest.mark.slow
def test_cancel_mid_run_and_second_click(ctl, tiny_model):
    args = inputs(tiny_model, steps=100_000, preview=False, out_name="long")
    job = ctl.start(*args)
    deadline = time.time() + 60
    while job.event.stage != "train" or job.event.step < 2:
        assert job.running and time.time() < deadline, job.error
        time.sleep(0.02)
    with pytest.raises(Busy, match="already running"):  # a second click, even with other settings
        ctl.start(*inputs(tiny_model, out_name="other"))
    with pytest.raises(Busy, match="job is running"):
        ctl.compare(str(tiny_model), "a red square", "", 0, 4, 5.0, "long", 1.0, NONE, 1, NONE, 1, NONE, 1)
    assert "Cancelling" in ctl.cancel()
    assert job.wait(60)
    assert job.state == "cancelled"
    assert ctl.status_text(job).startswith("**Cancelled**") and "no adapter" in ctl.status_text(job)
    assert written(ctl) == []  # no adapter, no temp file, no preview
    assert not any(p.name.endswith(".tmp") for p in ctl.backend.lora_dir.rglob("*"))
    assert ctl.cancel() == "No job is running."
    # the pairs survive: the same settings resume them; other settings use another folder
    again = ctl.build_request(*args)
    assert again.cfg.pairs_dir == job.request.cfg.pairs_dir
    assert ctl.build_request(*inputs(tiny_model, steps=5, num_pairs=3, out_name="long")).cfg.pairs_dir != \
        again.cfg.pairs_dir


def test_a_failing_job_shows_its_message(ctl, tiny_model, monkeypatch):
    """A failure only the running job finds (a bad detector is refused on the click now): its line is shown."""
    import duo_unlearn.trainer.unlearn as unlearn_mod

    def fails(cfg, progress=None, model=None):
        raise UserError("the disk filled up while writing nosuchfile")

    monkeypatch.setattr(unlearn_mod, "unlearn", fails)
    job, frames = run_to_end(ctl, *inputs(tiny_model, out_name="bad"))
    assert job.state == "failed"
    assert frames[-1][0].startswith("**Failed**") and "nosuchfile" in frames[-1][0]
    assert written(ctl) == []


def test_build_tab_wires_components(tmp_path, tiny_model):
    import gradio as gr

    backend = StandaloneBackend(tmp_path / "Lora", model=str(tiny_model))
    with gr.Blocks() as demo:
        c = build_tab(backend)
    assert c["model"].value == str(tiny_model)
    assert c["preset"].value == "testbed-red" and "red circle" in c["unsafe"].value
    from duo_unlearn.trainer.presets import get_preset
    from duo_unlearn.trainer.unlearn import UnlearnConfig, plan

    cli_plan = plan(UnlearnConfig(out=str(tiny_model.parent / "x.safetensors")))[1][0].train  # what the CLI runs
    assert get_preset("testbed-red").steps == cli_plan.steps == c["steps"].value
    assert c["rank"].value == UnlearnConfig.rank == cli_plan.lora.rank
    assert len(c["slots"]) == 8
    assert all(c[k]._id in demo.blocks for k in ("model", "preset", "steps", "rank"))  # built into the host's Blocks


@pytest.mark.slow
def test_cancel_during_the_preview_says_the_adapter_is_complete(ctl, tiny_model):
    """Cancel once the adapter is saved (the preview is rendering): the status must not claim nothing was written."""
    runner = ctl.backend.runner
    original = runner._callback

    def cancel_at_preview(job):
        inner = original(job)

        def callback(event):
            if event.stage == "preview":
                runner.cancel()
            return inner(event)
        return callback

    runner._callback = cancel_at_preview
    job, frames = run_to_end(ctl, *inputs(tiny_model, out_name="late"))
    assert job.state == "cancelled"
    assert (ctl.backend.lora_dir / "late.safetensors").exists()
    assert "`late.safetensors` had been saved complete" in frames[-1][0]


@pytest.mark.parametrize("preview, overwrite, refused", [(True, False, True), (False, False, False),
                                                         (True, True, False)])
def test_an_earlier_preview_is_refused_in_the_tabs_words(ctl, tiny_model, preview, overwrite, refused):
    """A preview PNG left beside a deleted adapter would be replaced at the end of training: the tab says so before
    it starts, naming its own controls rather than the CLI's flags."""
    ctl.backend.lora_dir.mkdir(parents=True, exist_ok=True)
    (ctl.backend.lora_dir / "duo_red.preview.png").write_bytes(b"mine")
    args = inputs(tiny_model, preview=preview, overwrite=overwrite)
    if refused:
        with pytest.raises(UserError, match=r"duo_red.preview.png already exists .*tick 'Overwrite', or untick"):
            ctl.build_request(*args)
    else:
        assert [p.name for p in ctl.build_request(*args).outputs] == ["duo_red.safetensors"]
    assert (ctl.backend.lora_dir / "duo_red.preview.png").read_bytes() == b"mine"


def test_a_seed_past_32_bits_is_refused_by_name(ctl, tiny_model):
    with pytest.raises(UserError, match="Seed must be a whole number from 0 to 4294967295"):
        ctl.build_request(*inputs(tiny_model, seed=2**40))
    assert written(ctl) == []


@pytest.mark.parametrize("schedule, warmup, message", [
    ("cosine_annealing", 0, "Learning-rate schedule must be one of constant, constant_with_warmup"),
    ("constant", 2, "Warm-up steps need a learning-rate schedule with a warm-up"),
    ("cosine", 3, r"Warm-up steps \(3\) must be fewer than Steps \(3\)"),
    ("cosine", -1, "Warm-up steps must be a whole number of at least 0"),
    (None, None, None), ("cosine", 2, None),
])
def test_the_schedule_boxes_reach_the_plan_or_are_refused_in_the_tabs_words(ctl, tiny_model, schedule, warmup,
                                                                            message):
    args = [*inputs(tiny_model), *RUNTIME, "", "", "", schedule, warmup]
    if message:
        with pytest.raises(UserError, match=message) as caught:
            ctl.build_request(*args)
        assert "--" not in str(caught.value) and "lr_" not in str(caught.value)
        return
    train = ctl.build_request(*args).plans[0].train  # None: boxes emptied, the official constant rate
    assert (train.lr_scheduler, train.lr_warmup_steps) == (schedule or "constant", warmup or 0)


@pytest.mark.parametrize("over, runtime, retain, message", [
    (dict(num_pairs=10**9), {}, {}, "Number of pairs must be a whole number from 1 to 4096"),
    (dict(steps=10**12), {}, {}, "Steps must be a whole number from 1 to 100000"),
    (dict(rank=10**9), {}, {}, "Rank must be a whole number from 1 to 1024"),
    (dict(batch_pairs=10**6), {}, {}, "Pairs per step must be a whole number from 1 to 1024"),
    ({}, {}, dict(n="999999999"), "Retain images must be a whole number from 0 to 100000"),
    (dict(beta="1e400"), {}, {}, r"β \(beta\) must be a finite number, got '1e400'"),
    (dict(lr="inf"), {}, {}, "Learning rate must be a finite number"),
    ({}, {}, dict(lam="inf"), "Retain weight must be a finite number"),
    ({}, dict(device="cuda"), {}, "set the device to cpu or auto"),
    (dict(detector="nudenett"), {}, {}, "unknown detector 'nudenett'"),
    (dict(detector="colour:chartreuse"), {}, {}, "unknown colour 'chartreuse'"),
    (dict(model="<text file>"), {}, {}, "unsupported model file type"),
    (dict(model="<plain folder>"), {}, {}, "not a diffusers model folder"),
    (dict(config_dir="<text file>"), {}, {}, "Config folder .* is a file"),
    (dict(config_dir="<missing folder>"), {}, {}, "Config folder .*nowhere does not exist"),
    (dict(out_name="taken"), {}, {}, "taken.safetensors is a folder in the LoRA folder"),
])
def test_gui_values_are_refused_on_click_in_the_tabs_words(ctl, tiny_model, tmp_path, over, runtime, retain, message):
    """What a click would otherwise start (a job of days, a model that is not one) or fail at later, and numbers
    past what the boxes mean: one message before the job starts, naming the box, not a CLI flag."""
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "plain").mkdir()
    ctl.backend.lora_dir.mkdir(parents=True, exist_ok=True)
    (ctl.backend.lora_dir / "taken.safetensors").mkdir()
    stand_in = {"<text file>": str(tmp_path / "notes.txt"), "<plain folder>": str(tmp_path / "plain"),
                "<missing folder>": str(tmp_path / "nowhere")}
    over = {k: stand_in.get(v, v) for k, v in over.items()}
    run = dict(zip(["device", "mixed_precision", "gradient_checkpointing", "resolution", "micro_batch_pairs"],
                   RUNTIME), **runtime)
    ret = dict(dict(text="", n="", lam=""), **retain)
    with pytest.raises(UserError, match=message) as caught:
        ctl.build_request(*inputs(tiny_model, **over), *run.values(), *ret.values())
    assert "--" not in str(caught.value) and "\n" not in str(caught.value)
    assert ctl.backend.runner.job is None
    assert written(ctl) == []


def _adapter_for(lora_dir, name: str, family: str):
    """A DUO adapter file as the Compare tab lists it, recorded for `family`."""
    import json

    import torch
    from safetensors.torch import save_file

    lora_dir.mkdir(parents=True, exist_ok=True)
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file({f"{key}.lora_down.weight": torch.zeros(2, 8), f"{key}.lora_up.weight": torch.zeros(8, 2),
               f"{key}.alpha": torch.tensor(2.0)}, str(lora_dir / f"{name}.safetensors"),
              metadata={"duo.family": json.dumps(family), "duo.concept": json.dumps("red")})


@pytest.mark.parametrize("weight, guidance, message", [
    ("inf", 5.0, "Weight of xl_red must be a finite number"),
    ("1e400", 5.0, "Weight of xl_red must be a finite number"),
    ("nan", 5.0, "Weight of xl_red must be a finite number"),
    (-1e9, 5.0, "Weight of xl_red must be from -10 to 10"),
    (1.0, "inf", "Guidance must be a finite number"),
    (1.0, -1, "Guidance must be 0 or more"),
    (1.0, 5.0, "xl_red was trained for SDXL, and this model is SD 1.x: pick a model of its family"),
])
def test_compare_refuses_what_cannot_draw(ctl, tiny_model, weight, guidance, message):
    _adapter_for(ctl.backend.lora_dir, "xl_red", "sdxl")
    with pytest.raises(UserError, match=message):
        ctl.compare(str(tiny_model), "a red square", "", 0, 2, guidance, "xl_red", weight, NONE, 1.0, NONE, 1.0,
                    NONE, 1.0)


def test_compare_says_a_damaged_adapter_is_damaged_not_missing(ctl, tiny_model):
    _adapter_for(ctl.backend.lora_dir, "red", "sd1")
    path = ctl.backend.lora_dir / "red.safetensors"
    assert ctl.backend.find_adapter("red").path == path
    path.write_bytes(path.read_bytes()[:-20])  # the header intact, the tensor data cut short
    with pytest.raises(UserError, match="red.safetensors cannot be read as a DUO adapter"):
        ctl.compare(str(tiny_model), "a red square", "", 0, 2, 5.0, "red", 1.0, NONE, 1.0, NONE, 1.0, NONE, 1.0)
    with pytest.raises(UserError, match="'gone' is not in"):
        ctl.compare(str(tiny_model), "a red square", "", 0, 2, 5.0, "gone", 1.0, NONE, 1.0, NONE, 1.0, NONE, 1.0)
