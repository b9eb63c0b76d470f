"""The safe twins' negative prompt: the pair's unsafe prompt (the paper's), or text the preset or the user gives."""
import json

import pytest
from PIL import Image, ImageChops

from duo_unlearn.trainer.errors import UserError
from duo_unlearn.trainer.families import get_family
from duo_unlearn.trainer.models import load_model
from duo_unlearn.trainer.on_policy_pairs import on_policy_pairs
from duo_unlearn.trainer.pair_dataset import read_pairs
from duo_unlearn.trainer.pairs import PairConfig, generate_pairs, made_with
from duo_unlearn.trainer.presets import UNSAFE_PROMPT
from duo_unlearn.trainer.unlearn import UnlearnConfig, plan

TWO = dict(unsafe_prompts=("a red circle", "a red square"), safe_prompts=("a blue circle", "a blue square"))


def test_the_placeholder_stands_for_each_pairs_unsafe_prompt():
    paper = PairConfig(out="d", num_pairs=4, **TWO)
    assert [paper.twin_negative_for(i) for i in range(4)] == ["a red circle"] * 2 + ["a red square"] * 2
    mixed = PairConfig(out="d", num_pairs=4, twin_negative="red, {unsafe}", **TWO)
    assert mixed.twin_negative_for(3) == "red, a red square"
    assert PairConfig(out="d", num_pairs=4, twin_negative="", **TWO).twin_negative_for(0) == ""
    # the paper's folders record no such setting, so the ones made before it existed still resume
    assert "twin_negative" not in paper.settings() and mixed.settings()["twin_negative"] == "red, {unsafe}"


def _made(tmp_path, tiny_model, name, monkeypatch, **kw):
    """Pairs from the tiny model, and the negative prompts each SDEdit call was given."""
    model = load_model(tiny_model)
    family = type(get_family(model.family))
    img2img = family.img2img
    negatives = []

    def spying(self, pipe):
        edit = img2img(self, pipe)

        def call(**args):
            negatives.extend(args["negative_prompt"])
            return edit(**args)
        return call

    monkeypatch.setattr(family, "img2img", spying)
    cfg = PairConfig(out=str(tmp_path / name), model=str(tiny_model), num_pairs=2, batch_size=2, sample_steps=4,
                     seed=3, **TWO, **kw)
    generate_pairs(cfg, model=model)
    monkeypatch.setattr(family, "img2img", img2img)
    return tmp_path / name, negatives


def _image(folder, relative):
    return Image.open(folder / relative).convert("RGB")


def test_twins_are_drawn_with_the_chosen_negative_prompt(tmp_path, tiny_model, monkeypatch):
    paper, paper_negatives = _made(tmp_path, tiny_model, "paper", monkeypatch)
    concept, concept_negatives = _made(tmp_path, tiny_model, "concept", monkeypatch, twin_negative="red")
    assert paper_negatives == ["a red circle", "a red square"] and concept_negatives == ["red", "red"]
    assert made_with(concept)["twin_negative"] == "red" and "twin_negative" not in made_with(paper)
    for a, b in zip(read_pairs(paper), read_pairs(concept), strict=True):
        # the same unsafe images, twins of them drawn with another negative prompt
        assert ImageChops.difference(_image(paper, a.unsafe), _image(concept, b.unsafe)).getbbox() is None
        assert ImageChops.difference(_image(paper, a.safe), _image(concept, b.safe)).getbbox() is not None


def test_a_folder_made_with_another_negative_prompt_is_not_resumed_into(tmp_path, tiny_model, monkeypatch):
    folder, _ = _made(tmp_path, tiny_model, "paper", monkeypatch)
    before = {p.name: p.read_bytes() for p in folder.rglob("*.png")}
    with pytest.raises(UserError, match="other settings"):
        generate_pairs(PairConfig(out=str(folder), model=str(tiny_model), num_pairs=2, batch_size=2, sample_steps=4,
                                  seed=3, twin_negative="red", **TWO))
    assert {p.name: p.read_bytes() for p in folder.rglob("*.png")} == before


def test_a_negative_that_is_not_text_is_refused_in_one_line():
    with pytest.raises(UserError, match="twin_negative must be text"):
        PairConfig(out="d", twin_negative=3, **TWO).validate()


TWIN_PRESET = """
[own]
description = "a preset whose twins are drawn off the concept's word only, on SD 1.x"
detector = "none"
num_pairs = 2
strength = 0.75
beta = 10
[own.families.sd1]
twin_negative = "red"
[own.concepts.c]
unsafe_prompts = ["a red square"]
safe_prompts = ["a blue square"]
"""


def test_unlearn_takes_the_presets_negative_unless_given(tmp_path, monkeypatch):
    from duo_unlearn.trainer import presets as presets_module

    assert plan(UnlearnConfig(preset="custom", **TWO))[1][0].pairs.twin_negative == UNSAFE_PROMPT
    assert plan(UnlearnConfig(preset="custom", twin_negative="red", **TWO))[1][0].pairs.twin_negative == "red"
    path = tmp_path / "presets.toml"
    path.write_text(TWIN_PRESET)
    real = presets_module.load_presets
    monkeypatch.setattr(presets_module, "load_presets", lambda: real(path))
    assert plan(UnlearnConfig(preset="own", model="testbed"))[1][0].pairs.twin_negative == "red"
    assert plan(UnlearnConfig(preset="own", model="testbed-xl"))[1][0].pairs.twin_negative == UNSAFE_PROMPT
    back = plan(UnlearnConfig(preset="own", model="testbed", twin_negative=UNSAFE_PROMPT))[1][0].pairs
    assert back.twin_negative == UNSAFE_PROMPT


def test_on_policy_twins_take_the_datasets_negative(tmp_path, tiny_model, monkeypatch):
    from duo_unlearn.trainer.config import TrainConfig
    from duo_unlearn.trainer.erasure_stop import erasure_check

    folder, _ = _made(tmp_path, tiny_model, "concept", monkeypatch, twin_negative="no {unsafe}")
    cfg = TrainConfig(pairs=str(folder), model=str(tiny_model), out=str(tmp_path / "a.safetensors"), stop_every=2,
                      stop_detector="colour:red", on_policy_pairs=True)
    records = read_pairs(folder)
    grower = on_policy_pairs(cfg, erasure_check(cfg, records), records)
    assert grower.twin_negative == "no {unsafe}"
    (folder / "dataset.json").write_text(json.dumps({"settings": {}}))  # pairs of the paper's kind
    assert on_policy_pairs(cfg, erasure_check(cfg, records), records).twin_negative == UNSAFE_PROMPT


def test_the_adapter_records_a_negative_other_than_the_papers(tmp_path, tiny_model):
    from duo_unlearn.trainer.export import describe_adapter
    from duo_unlearn.trainer.unlearn import unlearn

    out = tmp_path / "u.safetensors"
    unlearn(UnlearnConfig(preset="custom", model=str(tiny_model), out=str(out), num_pairs=2, steps=1, rank=4,
                          preview=False, twin_negative="red", **TWO))
    assert describe_adapter(out)["duo"]["twin_negative"] == "red"
    assert made_with(tmp_path / "u_pairs")["twin_negative"] == "red"
