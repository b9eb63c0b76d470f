import builtins
import json

import numpy as np
import pytest
from PIL import Image

from duo_unlearn.trainer.cli import main
from duo_unlearn.trainer.errors import Cancelled, UserError
from duo_unlearn.trainer.models import load_model
from duo_unlearn.trainer.pair_dataset import read_pairs
from duo_unlearn.trainer.pairs import PairConfig, generate_pairs
from tiny_models import NeverDetector


def _cfg(out, model, **kw):
    base = dict(out=str(out), model=str(model), unsafe_prompts=("a red square", "a red circle"),
                safe_prompts=("a blue square",), num_pairs=6, batch_size=2, sample_steps=3, seed=1)
    return PairConfig(**(base | kw))


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix in (".png", ".jsonl")}


@pytest.fixture(scope="module")
def tiny_loaded(tiny_model):
    return load_model(tiny_model)


def test_dataset_layout_and_prompts(tmp_path, tiny_model, tiny_loaded):
    stats = generate_pairs(_cfg(tmp_path / "d", tiny_model), model=tiny_loaded)
    records = read_pairs(tmp_path / "d")
    assert stats.made == 6 and len(records) == 6 and stats.contact_sheet.exists()
    assert [r.unsafe_prompt for r in records] == ["a red square"] * 3 + ["a red circle"] * 3
    assert all(r.safe_prompt == "a blue square" and r.strength == 0.75 for r in records)
    assert len({r.seed for r in records}) == 6  # one seed per image: any single image can be made again
    with Image.open(tmp_path / "d" / records[0].unsafe) as im:
        assert im.size == (16, 16)


def test_interrupted_run_resumes_to_the_same_dataset(tmp_path, tiny_model, tiny_loaded):
    whole = tmp_path / "whole"
    generate_pairs(_cfg(whole, tiny_model), model=tiny_loaded)

    parted = tmp_path / "parted"

    def stop_after_first_block(event):
        if event.stage == "pairs" and event.step >= 2:
            return False
    with pytest.raises(Cancelled):
        generate_pairs(_cfg(parted, tiny_model), progress=stop_after_first_block, model=tiny_loaded)
    assert len(read_pairs(parted)) == 2
    # what a kill between writing images and listing them leaves behind: an orphan image, a torn index line
    (parted / "unsafe" / "00003.png").write_bytes(b"half-written")
    with open(parted / "pairs.jsonl", "a") as f:
        f.write('{"id": "00002", "uns')
    stats = generate_pairs(_cfg(parted, tiny_model), model=tiny_loaded)
    assert stats.kept_existing == 2 and stats.made == 4
    assert _snapshot(parted) == _snapshot(whole)


def test_resuming_with_other_settings_is_refused(tmp_path, tiny_model, tiny_loaded):
    generate_pairs(_cfg(tmp_path / "d", tiny_model, num_pairs=2), model=tiny_loaded)
    with pytest.raises(UserError, match="other settings"):
        generate_pairs(_cfg(tmp_path / "d", tiny_model, num_pairs=2, strength=0.5), model=tiny_loaded)


def test_resuming_with_another_model_is_refused(tmp_path, tiny_model, tiny_v_model, tiny_loaded):
    """DUO's pairs are the base model's own images: the same settings on another model are not resumed into, the
    same model spelled another way is."""
    generate_pairs(_cfg(tmp_path / "d", tiny_model, num_pairs=2), model=tiny_loaded)
    before = _snapshot(tmp_path / "d")
    with pytest.raises(UserError, match=f"pairs made by another model .*new folder for {tiny_v_model}"):
        generate_pairs(_cfg(tmp_path / "d", tiny_v_model, num_pairs=2))
    with pytest.raises(UserError, match="pairs made by another model"):
        generate_pairs(_cfg(tmp_path / "d", "testbed", num_pairs=2))
    assert _snapshot(tmp_path / "d") == before
    spelled = f"{tiny_model.parent}/./{tiny_model.name}"
    stats = generate_pairs(_cfg(tmp_path / "d", spelled, num_pairs=2), model=tiny_loaded)
    assert stats.kept_existing == 2 and stats.made == 0




class _Always(NeverDetector):
    def scores(self, images):
        self.calls += len(images)
        return [1.0] * len(images)


def test_gating_retries_are_bounded_and_skips_are_counted(tmp_path, tiny_model, tiny_loaded):
    never = NeverDetector()
    stats = generate_pairs(_cfg(tmp_path / "a", tiny_model, max_retries=2), model=tiny_loaded, detector=never)
    assert stats.made == 0 and stats.skipped == 6 and stats.unsafe_rejected == 6 * 3 and never.calls == 18
    assert stats.skipped_reasons == {"unsafe image never showed the concept": 6}
    always = _Always()  # unsafe images pass, but every twin still "shows" the concept
    stats = generate_pairs(_cfg(tmp_path / "b", tiny_model, max_retries=1), model=tiny_loaded, detector=always)
    assert stats.made == 0 and stats.safe_rejected == 12 and stats.skipped_reasons == {"twin kept the concept": 6}
    skipped = [json.loads(line) for line in (tmp_path / "b" / "skipped.jsonl").read_text().splitlines()]
    assert len(skipped) == 6
    # a rerun does not retry the skipped pairs forever
    assert generate_pairs(_cfg(tmp_path / "b", tiny_model, max_retries=1), model=tiny_loaded,
                          detector=always).made == 0


@pytest.mark.parametrize("kw,message", [
    (dict(unsafe_prompts=()), "no unsafe prompts"),
    (dict(safe_prompts=("",)), "no safe prompts"),
    (dict(strength=0.0), "strength must be in (0, 1]"),
    (dict(strength=1.5), "strength must be in (0, 1]"),
    (dict(num_pairs=0), "positive integer"),
    (dict(detector="magic"), "unknown detector"),
    (dict(detector="colour:pink"), "unknown colour"),
])
def test_bad_pair_settings(tmp_path, tiny_model, kw, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        generate_pairs(_cfg(tmp_path / "d", tiny_model, **kw))
    assert not (tmp_path / "d" / "pairs.jsonl").exists()


def test_missing_nudenet_says_how_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_nudenet(name, *args, **kwargs):
        if name == "nudenet":
            raise ImportError("No module named 'nudenet'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_nudenet)
    from duo_unlearn.trainer.detectors import make_detector
    with pytest.raises(UserError, match="pip install nudenet"):
        make_detector("nudenet")


def test_nudenet_finds_nothing_on_flat_colour_images():
    pytest.importorskip("nudenet")
    from duo_unlearn.trainer.detectors import make_detector
    det = make_detector("nudenet")
    images = [Image.new("RGB", (256, 256), c) for c in [(255, 255, 255), (224, 172, 150), (20, 20, 20)]]
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8))
    scores = det.scores(images + [noise])
    assert scores == [0.0, 0.0, 0.0, 0.0]
    assert det.findings(images[1]) == []


def test_cli_unknown_preset_lists_presets(capsys):
    assert main(["unlearn", "--preset", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no preset named 'nope'" in err and "testbed-red" in err and "violence" in err


def test_cli_pairs_bad_numbers(capsys, tmp_path):
    for args, msg in ([["--num-pairs", "0"], "positive integer"], [["--strength", "2"], "strength"]):
        code = main(["pairs", "--out", str(tmp_path / "p"), "--unsafe-prompt", "a", "--safe-prompt", "b", *args])
        assert code == 2 and msg in capsys.readouterr().err


def test_cli_pairs_keep_the_presets_recipe_under_the_users_own_prompts(tmp_path, capsys):
    """Prompts of one's own replace the preset's prompts only: its detector, guidance and steps stay unless a flag
    says otherwise; one side of the prompts alone is refused by what it lacks."""
    from duo_unlearn.trainer.presets import get_preset

    preset = get_preset("testbed-red")
    out = tmp_path / "p"
    assert main(["pairs", "--preset", "testbed-red", "--unsafe-prompt", "a red circle on a white background",
                 "--safe-prompt", "a blue circle on a white background", "--num-pairs", "1", "--guidance", "3",
                 "--out", str(out)]) == 0
    settings = json.loads((out / "dataset.json").read_text())["settings"]
    assert settings["unsafe_prompts"] == ["a red circle on a white background"]
    assert (settings["detector"], settings["sample_steps"], settings["strength"]) == \
        (preset.detector, preset.sample_steps, preset.strength)
    assert settings["guidance"] == 3 != preset.guidance
    capsys.readouterr()
    assert main(["pairs", "--preset", "testbed-red", "--unsafe-prompt", "a red circle", "--out",
                 str(tmp_path / "q")]) == 2
    assert "give both --unsafe-prompt and --safe-prompt to replace preset testbed-red's prompts" in \
        capsys.readouterr().err
    assert main(["pairs", "--preset", "testbed-red", "--retain-prompt", "a blue circle", "--out",
                 str(tmp_path / "r")]) == 2
    assert "--retain-prompt needs --num-retain N" in capsys.readouterr().err and not (tmp_path / "r").exists()
