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
