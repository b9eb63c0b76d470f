"""`duo-unlearn eval` and its parts, on cases with a known answer (tiny models, rendered test-bed images)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from duo_unlearn.trainer.cli import main
from duo_unlearn.trainer.config import TrainConfig
from duo_unlearn.trainer.detectors import make_detector
from duo_unlearn.trainer.errors import UserError
from duo_unlearn.trainer.evaluate import EvalConfig, evaluate, summary_table
from duo_unlearn.trainer.evaluate.concept_inversion import concept_inversion, token_prompts
from duo_unlearn.trainer.evaluate.dsr import defense_success_rate
from duo_unlearn.trainer.evaluate.preservation import build_lpips, lpips_distances, prior_preservation
from duo_unlearn.trainer.evaluate.prompt_attack import prompt_attack, synonym_attack
from duo_unlearn.trainer.evaluate.prompts import load_prompts
from duo_unlearn.trainer.evaluate.report import plot
from duo_unlearn.trainer.evaluate.ring_a_bell import genetic_search, ring_a_bell, word_vocabulary
from duo_unlearn.trainer.evaluate.run import generate
from duo_unlearn.trainer.models import load_model
from duo_unlearn.trainer.testbed.shapes import random_spec, render
from duo_unlearn.trainer.train import train


def _shapes(colour, n=8, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(render(random_spec(rng, colour=colour))) for _ in range(n)]


@pytest.fixture(scope="module")
def lpips_metric():
    return build_lpips("alex", backbone="random")


@pytest.fixture(scope="module")
def strong_adapter(tiny_model, pair_dir, tmp_path_factory):
    """An adapter that visibly changes the tiny model (high learning rate, a few steps)."""
    out = tmp_path_factory.mktemp("adapter") / "duo_red.safetensors"
    train(TrainConfig(pairs=str(pair_dir), model=str(tiny_model), out=str(out), steps=8, lr=5e-2, lam=0,
                      concept="red", seed=0))
    return out


# -- metrics with known answers --

def test_identical_images_lpips_zero_preservation_one(lpips_metric):
    images = _shapes("blue", 4) + _shapes("green", 4, seed=1)
    assert lpips_distances(lpips_metric, images, images) == [0.0] * 8
    pres = prior_preservation(lpips_metric, images, [im.copy() for im in images], backbone="random")
    assert pres.value == 1.0 and pres.lpips_mean == 0.0
    other = prior_preservation(lpips_metric, images, _shapes("red", 8, seed=2), backbone="random")
    assert 0 < other.lpips_mean and other.value < 1.0


def test_lpips_random_backbone_is_seeded():
    a, b = _shapes("red", 2), _shapes("blue", 2)
    assert lpips_distances(build_lpips(backbone="random"), a, b) == lpips_distances(build_lpips(backbone="random"),
                                                                                   a, b)


def test_dsr_all_red_is_0_all_blue_is_1():
    detector = make_detector("colour:red")
    red = defense_success_rate(_shapes("red", 12), detector)
    blue = defense_success_rate(_shapes("blue", 12), detector)
    assert (red.dsr, red.found, red.n) == (0.0, 12, 12)
    assert (blue.dsr, blue.found) == (1.0, 0)
    mixed = defense_success_rate(_shapes("red", 3) + _shapes("blue", 1), detector)
    assert mixed.dsr == 0.25
    with pytest.raises(UserError, match="detector"):
        defense_success_rate(_shapes("red", 1), None)


class _ConstantPipe:
    """A 'generator' drawing one colour whatever the prompt; records what it was asked."""

    def __init__(self, colour):
        self.colour, self.calls = colour, []

    def __call__(self, prompts, num_inference_steps, guidance_scale, generator, negative_prompt=None):
        self.calls.append((list(prompts), [g.initial_seed() for g in generator], negative_prompt))

        class Out:
            images = [Image.fromarray(render(random_spec(np.random.default_rng(g.initial_seed()),
                                                         colour=self.colour))) for g in generator]
        return Out()


@pytest.mark.parametrize("colour, expected", [("red", 0.0), ("blue", 1.0)])
def test_generator_of_one_colour(colour, expected):
    pipe = _ConstantPipe(colour)
    images = generate(pipe, ["a red circle", "a red square", "a red triangle"], 3, seed=10, steps=2, guidance=1,
                      batch=4)
    assert len(images) == 9
    assert defense_success_rate(images, make_detector("colour:red")).dsr == expected
    prompts = [p for c in pipe.calls for p in c[0]]
    seeds = [s for c in pipe.calls for s in c[1]]
    assert prompts == ["a red circle"] * 3 + ["a red square"] * 3 + ["a red triangle"] * 3
    assert seeds == list(range(10, 19))  # image j: seed + j, whatever the batching


# -- prompt sets --

def test_prompt_files(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("# a comment\na red circle\n\n  a crimson square  \na red circle\n")
    assert load_prompts(txt) == ["a red circle", "a crimson square", "a red circle"]
    assert load_prompts(txt, limit=1) == ["a red circle"]
    i2p = tmp_path / "i2p.csv"
    i2p.write_text('prompt,categories,hard,nudity_percentage\n"a woman, oil painting, by someone",sexual,1,55.0\n'
                   'a quiet lake,,0,0\n,,0,0\n', encoding="utf-8")
    assert load_prompts(i2p) == ["a woman, oil painting, by someone", "a quiet lake"]
    rab = tmp_path / "rab.csv"
    rab.write_text("\ufeffid,Prompt\n0,some searched words\n")
    assert load_prompts(rab) == ["some searched words"]
    bad = tmp_path / "bad.csv"
    bad.write_text("id,words\n0,x\n")
    with pytest.raises(UserError, match="prompt column"):
        load_prompts(bad)
    with pytest.raises(UserError, match="not found"):
        load_prompts(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("\n# only a comment\n")
    with pytest.raises(UserError, match="no prompts"):
        load_prompts(tmp_path / "empty.txt")
    assert prompt_attack(path=txt).prompts[1] == "a crimson square"


def test_synonym_attack_and_token_prompts():
    a = synonym_attack(["a red circle on a white background", "a blue square", "Red square"], ["red"],
                       ["crimson", "scarlet"])
    assert a.prompts == ["a crimson circle on a white background", "a scarlet circle on a white background",
                         "crimson square", "scarlet square"]
    assert token_prompts(["a red circle", "a reddish square", "nothing here"], ["red"], "<t>") == \
        ["a <t> circle", "a photo of <t>", "a photo of <t>"]
    assert token_prompts(["a red circle"], ["red"], "<t>", template="{} art") == ["<t> art"]


# -- attacks --

def test_concept_inversion_lowers_its_loss(tiny_model, pair_dir):
    from duo_unlearn.trainer.pair_dataset import read_pairs

    pipe = load_model(str(tiny_model)).pipe
    records = read_pairs(pair_dir)
    images = [Image.open(pair_dir / r.unsafe).convert("RGB") for r in records]
    unet_before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    rows_before = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    prompts = token_prompts([r.unsafe_prompt for r in records], ["red"], "<ci-x>")
    assert prompts[0] == "a <ci-x> square"
    result = concept_inversion(pipe, images, prompts, "<ci-x>", steps=60, lr=5e-2, batch=4, seed=0)
    print(f"concept inversion eval loss {result.eval_loss_before:.5f} -> {result.eval_loss_after:.5f}")
    assert result.eval_loss_after < result.eval_loss_before
    weight = pipe.text_encoder.get_input_embeddings().weight
    assert torch.equal(weight[:len(rows_before)], rows_before)  # only the new row is new
    assert torch.allclose(weight[result.token_id], result.embedding)
    assert all(torch.equal(v, unet_before[k]) for k, v in pipe.unet.state_dict().items())  # the model stayed frozen
    ids = pipe.tokenizer("a <ci-x> square").input_ids
    assert result.token_id in ids
    assert len(generate(pipe, ["a <ci-x> square"], 1, seed=0, steps=2, guidance=2.0)) == 1


def test_genetic_search_finds_a_known_optimum():
    target = np.array([5, 7, 9, 11])
    result = genetic_search(lambda pop: -(pop != target).sum(axis=1), list(range(20)), 4, population=48,
                            generations=60, seed=0)
    assert result.history == sorted(result.history)  # elitist: the best never gets worse
    assert result.ids == [5, 7, 9, 11] and result.fitness == 0


def test_ring_a_bell_improves_fitness(tiny_model):
    pipe = load_model(str(tiny_model)).pipe
    vocab = word_vocabulary(pipe.tokenizer, exclude=["red"])
    red = pipe.tokenizer.convert_tokens_to_ids("red</w>")
    assert vocab and red not in vocab and "crimson</w>" in pipe.tokenizer.convert_ids_to_tokens(vocab)
    attack = ring_a_bell(pipe, ["a red circle", "a red square"], ["a blue circle", "a blue square"],
                         ["a blue circle", "a green square"], strength=2.0, length=4, population=24,
                         generations=15, exclude_words=["red"], seed=0)
    assert len(attack.prompts) == 2 and all(attack.prompts)
    for search in attack.info["searches"]:
        h = search["fitness_history"]
        assert h == sorted(h) and h[-1] > h[0]
    assert all("red" not in p.split() for p in attack.prompts)


# -- the whole run --

def test_evaluate_end_to_end(tiny_model, pair_dir, strong_adapter, tmp_path, lpips_metric):
    out = tmp_path / "report"
    cfg = EvalConfig(model=str(tiny_model), adapters=(str(strong_adapter),), images_per_prompt=1, max_prompts=2,
                     sample_steps=3, ci_steps=4, rab_population=8, rab_generations=2, rab_length=3, udatk_steps=2,
                     lpips_backbone="random", pairs=str(pair_dir), out=str(out), grid_columns=4)
    result = evaluate(cfg)
    assert list(result["results"]) == ["base", "negative prompt", "duo_red"]
    base, adapted = result["results"]["base"], result["results"]["duo_red"]
    assert base["preservation"]["one_minus_lpips"] == 1.0  # the reference against itself
    assert adapted["preservation"]["one_minus_lpips"] < 1.0  # the adapter is on while it generates
    assert set(adapted["attacks"]) == {"direct", "prompts", "ring_a_bell", "concept_inversion", "unlearndiffatk"}
    for r in result["results"].values():  # each DSR is what its own scores say, over every generated image
        for a in r["attacks"].values():
            assert a["n"] == a["n_prompts"] * cfg.images_per_prompt == len(a["scores"])
            assert a["found"] == sum(s >= a["threshold"] for s in a["scores"])
            assert a["dsr"] == pytest.approx(1 - a["found"] / a["n"])
    assert result["methods"][1]["negative_prompt"] == "red"
    assert result["attacks"]["prompts"]["prompts"][0].startswith("a crimson")
    ci = result["attacks"]["concept_inversion"]
    assert ci["settings"]["lr"] == 5e-3 and ci["settings"]["batch"] == 4 and ci["settings"]["images"] == 6
    assert result["methods"][2]["facts"]["concept"] == "red"
    saved = json.loads((out / "report.json").read_text())
    assert saved["results"] == result["results"] and saved["settings"]["ci_steps"] == 4
    assert Image.open(out / "plot.png").size[0] > 300
    assert {p.name for p in out.glob("grid_*.png")} == {"grid_unrelated.png", "grid_direct.png", "grid_prompts.png",
                                                        "grid_ring_a_bell.png", "grid_concept_inversion.png",
                                                        "grid_unlearndiffatk.png"}
    table = summary_table(result)
    assert "| duo_red |" in table and "DSR concept_inversion" in table


def test_loading_an_adapter_says_nothing_about_text_encoders(tiny_model, strong_adapter):
    """DUO adapters hold denoiser weights only: diffusers' per-text-encoder "No LoRA keys" paragraph would print on
    every eval and every Compare click."""
    from duo_unlearn.trainer.evaluate.methods import adapter_method, load_adapters
    from tiny_models import logged_warnings

    pipe = load_model(str(tiny_model)).pipe
    with logged_warnings() as said:
        load_adapters(pipe, [adapter_method(strong_adapter)])
    assert "eval_0" in {a for names in pipe.get_list_adapters().values() for a in names}
    assert not [m for m in said if "No LoRA keys" in m]


def test_plot_without_matplotlib(tmp_path):
    report = {"results": {"base": {"preservation": {"one_minus_lpips": 1.0}, "attacks": {"direct": {"dsr": 0.1}}},
                          "duo": {"preservation": {"one_minus_lpips": 0.93}, "attacks": {"direct": {"dsr": 0.97}}}}}
    path = plot(report, tmp_path / "p.png", "t")
    im = Image.open(path)
    assert im.size[0] > 200 and len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)) > 3


def test_plot_styles_tell_two_dozen_methods_apart_and_gray_out_those_not_highlighted(tmp_path):
    from duo_unlearn.trainer.evaluate.report import OTHER, point_styles

    methods = [f"m{i}" for i in range(25)]
    styles = point_styles(methods)
    assert len({(c, shape) for c, shape, _ in styles.values()}) == 25  # past ten colours the shape changes
    picked = point_styles(methods, highlight=["m3", "m20"])
    assert [m for m, (c, _, _) in picked.items() if c != OTHER] == ["m3", "m20"]
    assert picked["m3"][0] != picked["m20"][0] and picked["m3"][2] < picked["m20"][2] < picked["m0"][2]
    report = {"results": {m: {"preservation": {"one_minus_lpips": 0.9 + i / 250},
                              "attacks": {"direct": {"dsr": i / 24}}} for i, m in enumerate(methods)}}
    im = np.asarray(Image.open(plot(report, tmp_path / "p.png", "t", highlight=["m3", "m20"])).convert("RGB"))
    colours = {tuple(c) for c in im.reshape(-1, 3)}
    assert OTHER in colours and picked["m3"][0] in colours and picked["m20"][0] in colours
    assert picked["m20"][0] != (44, 160, 44) and (44, 160, 44) not in colours  # the third palette colour: unused


# -- the command line --

def _run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("case, expect", [
    ("missing_adapter", "adapter not found"), ("bad_preset", "no preset named"),
    ("not_lora", "holds no LoRA modules"), ("bad_attack", "unknown attack(s) fly"),
    ("bad_backbone", "lpips_backbone"), ("missing_prompts_file", "prompt file not found"),
])
def test_eval_cli_bad_input_one_line_exit_2(case, expect, capsys, tmp_path, tiny_model, strong_adapter):
    args = ["eval", "--model", str(tiny_model), "--adapter", str(strong_adapter), "--out", str(tmp_path / "r"),
            "--lpips-backbone", "random"]
    if case == "missing_adapter":
        args += ["--adapter", str(tmp_path / "nope.safetensors")]
    elif case == "bad_preset":
        args += ["--preset", "nudityy"]
    elif case == "not_lora":
        save_file({"x": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
        args += ["--adapter", str(tmp_path / "x.safetensors")]
    elif case == "bad_attack":
        args += ["--attacks", "direct,fly"]
    elif case == "bad_backbone":
        args[-1] = "imagenet"
    elif case == "missing_prompts_file":
        args += ["--prompts-file", str(tmp_path / "none.csv")]
    code, _, err = _run(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("duo-unlearn: error:") and expect in lines[0], err
    assert not (tmp_path / "r").exists()  # nothing written before the input is known good


def test_eval_cli_runs(capsys, tmp_path, tiny_model, strong_adapter):
    code, out, err = _run(capsys, "eval", "--model", str(tiny_model), "--adapter", str(strong_adapter),
                          "--out", str(tmp_path / "r"), "--lpips-backbone", "random", "--attacks", "direct,prompts",
                          "--images-per-prompt", "1", "--max-prompts", "2", "--sample-steps", "2", "--no-base")
    assert code == 0, err
    assert "| negative prompt |" in out and "| duo_red |" in out and "| base |" not in out
    assert (tmp_path / "r" / "report.json").exists() and (tmp_path / "r" / "plot.png").exists()
