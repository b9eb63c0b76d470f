import json

import pytest
from safetensors.torch import load_file

from duo_unlearn.trainer.cli import main
from duo_unlearn.trainer.errors import UserError
from duo_unlearn.trainer.export import describe_adapter
from duo_unlearn.trainer.unlearn import UnlearnConfig, plan, unlearn


def test_custom_preset_end_to_end(tmp_path, tiny_model, capsys):
    out = tmp_path / "adapters" / "redless.safetensors"
    code = main(["unlearn", "--preset", "custom", "--model", str(tiny_model), "--out", str(out),
                 "--unsafe-prompt", "a red square", "--safe-prompt", "a blue square", "--concept", "red",
                 "--num-pairs", "4", "--steps", "3", "--rank", "4"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    info = describe_adapter(out)
    assert info["duo"]["concept"] == "red" and info["duo"]["pairs"] == 4 and info["duo"]["preset"] == "custom"
    assert info["duo"]["unsafe_prompts"] == ["a red square"]
    assert (tmp_path / "adapters" / "redless_pairs" / "pairs.jsonl").exists()
    assert (tmp_path / "adapters" / "redless.preview.png").exists()
    assert "preview (base | unlearned)" in printed.out


def test_multi_concept_preset_plans_one_adapter_each(tmp_path):
    _, plans = plan(UnlearnConfig(preset="violence", out=str(tmp_path / "violence.safetensors")))
    assert [p.concept.name for p in plans] == ["blood", "suffering", "gun", "horror"]
    assert [p.train.out for p in plans] == [str(tmp_path / f"violence_{c}.safetensors")
                                           for c in ("blood", "suffering", "gun", "horror")]
    assert all(p.train.beta == 1000 and p.pairs.strength == 0.8 and p.pairs.num_pairs == 32 for p in plans)
    _, plans = plan(UnlearnConfig(preset="nudity", out=str(tmp_path / "n.safetensors")))
    assert plans[0].pairs.detector == "nudenet" and plans[0].train.beta == 500


def test_each_concept_adapter_is_trained_from_the_base_model(tmp_path, tiny_model, monkeypatch):
    from duo_unlearn.trainer import presets as presets_module

    real = presets_module.load_presets

    def with_two_concepts():
        p = real()
        p["custom"].concepts = [presets_module.Concept("a", ("a red square",), ("a blue square",)),
                                presets_module.Concept("b", ("a red circle",), ("a blue circle",))]
        return p
    monkeypatch.setattr(presets_module, "load_presets", with_two_concepts)
    results = unlearn(UnlearnConfig(preset="custom", model=str(tiny_model), out=str(tmp_path / "two.safetensors"),
                                    num_pairs=2, steps=2, rank=4, preview=False))
    assert [r.adapter.name for r in results] == ["two_a.safetensors", "two_b.safetensors"]
    for r in results:  # each file holds one adapter's modules, not an accumulation
        tensors = load_file(str(r.adapter))
        assert all(k.startswith("lora_unet_") for k in tensors)
        assert len({k.split(".")[0] for k in tensors}) == len(tensors) // 3


def test_custom_without_prompts_is_refused(tmp_path):
    with pytest.raises(UserError, match="no unsafe prompts"):
        plan(UnlearnConfig(preset="custom", out=str(tmp_path / "x.safetensors")))
    with pytest.raises(UserError, match="has no concept 'nope'"):
        plan(UnlearnConfig(preset="violence", concept="nope", out=str(tmp_path / "x.safetensors")))


FAMILY_PRESET = """
[fam]
description = "per-family test"
detector = "none"
num_pairs = 8
strength = 0.75
beta = 10
lam_retain = 1.0
retain_prompts = ["a blue circle"]
[fam.families.sdxl]
lam_retain = 0.25
steps = 7
[fam.concepts.c]
unsafe_prompts = ["a red square"]
safe_prompts = ["a blue square"]
"""


def _use_presets(monkeypatch, tmp_path, text):
    from duo_unlearn.trainer import presets as presets_module

    path = tmp_path / "presets.toml"
    path.write_text(text)
    real = presets_module.load_presets
    monkeypatch.setattr(presets_module, "load_presets", lambda: real(path))


def test_a_family_table_changes_the_recipe_on_that_family_only(tmp_path, monkeypatch, tiny_model):
    _use_presets(monkeypatch, tmp_path, FAMILY_PRESET)
    out = str(tmp_path / "a.safetensors")
    kw = dict(preset="fam", out=out, num_retain=4)
    (_, (xl,)) = plan(UnlearnConfig(model="testbed-xl", **kw))
    (_, (sd1,)) = plan(UnlearnConfig(model="testbed", **kw))
    (_, (tiny,)) = plan(UnlearnConfig(model=str(tiny_model), **kw))  # a folder: family from its model_index.json
    assert (xl.train.lam_retain, xl.train.steps) == (0.25, 7)
    assert (sd1.train.lam_retain, sd1.train.steps) == (tiny.train.lam_retain, tiny.train.steps) == (1.0, 1000)
    (_, (given,)) = plan(UnlearnConfig(model="testbed-xl", lam_retain=0.5, **kw))
    assert given.train.lam_retain == 0.5  # the user's value beats the family's


def test_a_presets_retain_band_runs_to_the_last_timestep_and_the_user_can_move_it(tmp_path, monkeypatch):
    _use_presets(monkeypatch, tmp_path, FAMILY_PRESET.replace("lam_retain = 0.25\n", "retain_t_min = 600\nt_max = 500\n"))
    kw = dict(preset="fam", out=str(tmp_path / "a.safetensors"), num_retain=4)
    (_, (sd1,)) = plan(UnlearnConfig(model="testbed", **kw))
    (_, (xl,)) = plan(UnlearnConfig(model="testbed-xl", **kw))
    (_, (moved,)) = plan(UnlearnConfig(model="testbed-xl", retain_t_min=300, t_max=400, **kw))
    assert (sd1.train.t_max, sd1.train.retain_t_range) == (750, (0, 750))  # no band: the pairs' range
    assert (xl.train.t_max, xl.train.retain_t_range) == (500, (600, 1000))
    assert (moved.train.t_max, moved.train.retain_t_range) == (400, (300, 1000))


def test_a_family_table_may_name_the_lora_layers_and_the_conditioning(tmp_path, monkeypatch):
    """A preset may put the LoRA on other layers and train on the unsafe prompt on one family; the other families,
    ESD and a user's own layers or conditioning keep theirs."""
    _use_presets(monkeypatch, tmp_path, FAMILY_PRESET + """
[fam.families.sd1]
target_modules = ["attn1.to_q", "attn2.to_k", "attn2.to_v"]
condition = "unsafe"
""")
    kw = dict(preset="fam", out=str(tmp_path / "a.safetensors"), num_retain=4)
    (_, (sd1,)) = plan(UnlearnConfig(model="testbed", **kw))
    (_, (xl,)) = plan(UnlearnConfig(model="testbed-xl", **kw))
    (_, (esd,)) = plan(UnlearnConfig(model="testbed", method="esd", **(kw | {"num_retain": 0})))
    (_, (own,)) = plan(UnlearnConfig(model="testbed", condition="prompt", target_modules=("attn1.to_v",), **kw))
    assert (sd1.train.condition, sd1.train.lora.target_modules) == ("unsafe", ("attn1.to_q", "attn2.to_k", "attn2.to_v"))
    assert (xl.train.condition, xl.train.lora.target_modules) == ("empty", ())
    assert (esd.train.condition, esd.train.lora.target_modules) == ("empty", ())
    assert (own.train.condition, own.train.lora.target_modules) == ("prompt", ("attn1.to_v",))


def test_a_preset_naming_prompt_layers_with_directions_on_the_empty_prompt_is_refused_before_any_pair(
        tmp_path, monkeypatch, tiny_model):
    _use_presets(monkeypatch, tmp_path, FAMILY_PRESET + """
[fam.families.sd1]
target_modules = ["attn1.to_q", "attn2.to_k"]
concept_directions = 0.5
""")
    with pytest.raises(UserError, match="layers that read only the prompt"):
        unlearn(UnlearnConfig(preset="fam", model=str(tiny_model), out=str(tmp_path / "a.safetensors"), num_retain=2))
    assert not (tmp_path / "a_pairs").exists()


@pytest.mark.parametrize("table, message", [
    ("[fam.families.sd4]\nsteps = 3", "unknown family table 'sd4'"),
    ("[fam.families.sdxl]\nunsafe_prompts = ['x']", "unsafe_prompts cannot differ per family"),
])
def test_a_wrong_family_table_is_one_clear_error(tmp_path, monkeypatch, table, message):
    _use_presets(monkeypatch, tmp_path, FAMILY_PRESET.split("[fam.families.sdxl]")[0] + table)
    with pytest.raises(UserError, match=message):
        plan(UnlearnConfig(preset="fam", out=str(tmp_path / "a.safetensors")))


@pytest.mark.parametrize("flags, expected", [([], True), (["--no-shared-t"], False), (["--shared-t"], True)])
def test_shared_t_comes_from_the_preset_unless_the_command_line_says(tmp_path, monkeypatch, flags, expected):
    from duo_unlearn.trainer.cli import build_parser
    from duo_unlearn.trainer.cli_options import build_config

    (_, (default,)) = plan(UnlearnConfig(out=str(tmp_path / "b.safetensors")))  # testbed-red: the official draw
    assert default.train.shared_t is False
    _use_presets(monkeypatch, tmp_path, FAMILY_PRESET.replace("lam_retain = 1.0\n", "lam_retain = 1.0\nshared_t = true\n"))
    args = build_parser().parse_args(["unlearn", "--preset", "fam", "--out", str(tmp_path / "a.safetensors"), *flags])
    (_, (p,)) = plan(build_config(UnlearnConfig, args))
    assert p.train.shared_t is expected


def test_target_modules_reach_the_adapter(tmp_path, tiny_model):
    out = tmp_path / "xattn.safetensors"
    code = main(["unlearn", "--preset", "custom", "--model", str(tiny_model), "--out", str(out),
                 "--unsafe-prompt", "a red square", "--safe-prompt", "a blue square", "--num-pairs", "2",
                 "--steps", "2", "--rank", "4", "--no-preview", "--condition", "unsafe",
                 "--target-modules", "attn2.to_k, attn2.to_v"])
    assert code == 0
    modules = {k.split(".")[0] for k in load_file(str(out))}
    assert modules and all(m.endswith(("attn2_to_k", "attn2_to_v")) for m in modules)
    assert {m[-4:] for m in modules} == {"to_k", "to_v"}
    args = json.loads(describe_adapter(out)["metadata"]["ss_network_args"])
    assert args["target_modules"] == ["attn2.to_k", "attn2.to_v"]


@pytest.mark.parametrize("flags, message", [
    (["--target-modules", "attn9.to_q"], "no module of the model matches target(s) attn9.to_q"),
    # a name's tail that is not a whole dotted part wraps nothing in peft: refused as well
    (["--target-modules", "o_q"], "no module of the model matches target(s) o_q"),
    (["--target-modules", "attn2.to_k", "--rank", "4096"], "is larger than any targeted layer allows"),
])
def test_bad_target_modules_are_refused_before_any_pair_is_made(tmp_path, tiny_model, capsys, flags, message):
    out = tmp_path / "bad.safetensors"
    code = main(["unlearn", "--preset", "custom", "--model", str(tiny_model), "--out", str(out),
                 "--unsafe-prompt", "a red square", "--safe-prompt", "a blue square", "--num-pairs", "2",
                 "--steps", "2", "--no-preview", *flags])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if "error" in line] == [err.strip().splitlines()[-1]]
    assert message in err.strip().splitlines()[-1]
    assert list(tmp_path.iterdir()) == []  # no pairs folder, no adapter
