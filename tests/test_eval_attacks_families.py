"""Concept Inversion, UnlearnDiffAtk and Ring-A-Bell on SDXL and SD3 (two CLIP encoders; SD3 with T5), on the tiny
random pipelines of tiny_families: each attack runs a few steps, lowers its own loss and hands back text a user can
paste, and `duo-unlearn eval` runs all five attacks on both families. Flux is still refused, in one line."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from duo_unlearn.trainer.errors import UserError
from duo_unlearn.trainer.evaluate import ATTACKS, EvalConfig, evaluate
from duo_unlearn.trainer.evaluate.concept_inversion import concept_inversion
from duo_unlearn.trainer.evaluate.ring_a_bell import ring_a_bell
from duo_unlearn.trainer.evaluate.run import generate
from duo_unlearn.trainer.evaluate.unlearn_diff_atk import unlearn_diff_atk
from duo_unlearn.trainer.families import get_family
from duo_unlearn.trainer.models import load_model
from duo_unlearn.trainer.testbed.shapes import full_prompt, random_spec, render
from tiny_families import build_tiny_sd3, build_tiny_sdxl

BUILDERS = {"sdxl": build_tiny_sdxl, "sd3": build_tiny_sd3}
RED = [("red", "circle", "white")] * 2 + [("red", "square", "black")] * 2


@pytest.fixture(scope="module", params=["sdxl", "sd3"])
def tiny(request, tmp_path_factory):
    return request.param, BUILDERS[request.param](tmp_path_factory.mktemp(f"attacks_{request.param}"))


def _images(specs, seed=0):
    rng = np.random.default_rng(seed)
    return ([Image.fromarray(render(random_spec(rng, colour=c, shape=s, background=b))) for c, s, b in specs],
            [full_prompt(c, s, b) for c, s, b in specs])


def _load(name, folder):
    pipe = load_model(folder).pipe
    if name == "sdxl":  # the random tiny UNet barely listens to its prompt (its cross-attention output is small):
        with torch.no_grad():  # louder, the attacks have something to find in a few steps
            for module_name, module in pipe.unet.named_modules():
                if module_name.endswith("attn2.to_out.0"):
                    module.weight.mul_(10)
    return pipe


def _clip(pipe):
    return [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]


def test_concept_inversion_learns_a_token_in_both_clip_encoders(tiny):
    name, folder = tiny
    pipe = _load(name, folder)
    denoiser = {k: v.clone() for k, v in get_family(name).denoiser(pipe).state_dict().items()}
    images, _ = _images(RED)
    result = concept_inversion(pipe, images, ["a <ci-x> shape"] * len(images), "<ci-x>", steps=20, lr=5e-2,
                               batch=2, eval_draws=8, seed=0)
    print(f"{name}: concept inversion loss {result.eval_loss_before:.5f} -> {result.eval_loss_after:.5f}")
    assert result.eval_loss_after < result.eval_loss_before and len(result.losses) == 20
    assert len(result.embeddings) == 2
    for (tok, encoder), vec in zip(_clip(pipe), result.embeddings):  # the token written into each encoder
        token_id = tok.convert_tokens_to_ids("<ci-x>")
        assert token_id in tok("a <ci-x> shape").input_ids
        assert torch.allclose(encoder.get_input_embeddings().weight[token_id], vec)
    assert all(torch.equal(v, denoiser[k]) for k, v in get_family(name).denoiser(pipe).state_dict().items())
    assert len(generate(pipe, ["a <ci-x> shape"], 1, seed=0, steps=2, guidance=2.0)) == 1  # the prompt pastes


def test_unlearn_diff_atk_finds_plain_word_prefixes(tiny):
    name, folder = tiny
    pipe = _load(name, folder)
    sizes = [len(tok) for tok, _ in _clip(pipe)]
    images, prompts = _images(RED)
    found = unlearn_diff_atk(pipe, images, prompts, [prompts[0]], tokens=3, steps=15, lr=5e-2, batch=2,
                             eval_draws=8, seed=0)[0]
    print(f"{name}: [{found.prefix}] loss {found.eval_loss_before:.5f} -> {found.eval_loss_after:.5f} "
          f"(prompt alone {found.eval_loss_prompt:.5f})")
    assert found.eval_loss_after < found.eval_loss_before and len(found.losses) == 15
    assert found.kept and found.found == f"{found.prefix} {prompts[0]}"  # better than the prompt alone
    assert found.images == 2
    for tok, encoder in _clip(pipe):  # written out, each CLIP tokenizer gives back the tokens optimised
        ids = tok(f"{found.prefix} {found.prompt}").input_ids
        assert ids[1:4] == found.prefix_ids
        assert not encoder.get_input_embeddings()._forward_hooks
    assert [len(tok) for tok, _ in _clip(pipe)] == sizes  # no token added


def test_ring_a_bell_searches_both_encoders_conditioning(tiny):
    name, folder = tiny
    pipe = load_model(folder).pipe
    attack = ring_a_bell(pipe, ["a red circle", "a red square"], ["a blue circle", "a blue square"],
                         ["a blue circle"], strength=2.0, length=3, population=12, generations=6,
                         exclude_words=["red"], seed=0)
    history = attack.info["searches"][0]["fitness_history"]
    print(f"{name}: ring-a-bell {attack.prompts[0]!r}, fitness {history[0]:.5f} -> {history[-1]:.5f}")
    assert history == sorted(history) and history[-1] > history[0]
    words = attack.prompts[0].split()
    assert len(words) == 3 and "red" not in words
    for tok, _ in _clip(pipe):
        assert len(tok(attack.prompts[0], add_special_tokens=False).input_ids) == 3


def test_evaluate_runs_every_attack(tiny, tmp_path):
    name, folder = tiny
    cfg = EvalConfig(model=str(folder), images_per_prompt=1, max_prompts=1, sample_steps=2, ci_steps=2,
                     ci_images=2, ci_batch=2, rab_population=4, rab_generations=1, rab_length=2, udatk_tokens=2,
                     udatk_steps=2, udatk_batch=2, lpips_backbone="random", out=str(tmp_path / "r"), grid_columns=2)
    assert cfg.attacks == ATTACKS  # the default: all five
    result = evaluate(cfg)
    assert result["model"]["family"] == name
    for r in result["results"].values():
        assert set(r["attacks"]) == set(ATTACKS)
        assert all(a["n"] == a["n_prompts"] for a in r["attacks"].values())
    assert "<ci-0>" in result["results"]["base"]["attacks"]["concept_inversion"]["prompts"][0]
    loss = result["attacks"]["unlearndiffatk"]["settings"]["loss"]
    assert loss == {"sdxl": "denoising MSE, epsilon target",
                    "sd3": "denoising MSE, x0 (preconditioned rectified flow) target"}[name]
    assert json.loads((tmp_path / "r" / "report.json").read_text())["results"] == result["results"]


def test_flux_is_refused_in_one_line(tmp_path):
    folder = tmp_path / "flux"  # the refusal comes before loading: a model index is all it reads
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(UserError) as e:
        evaluate(EvalConfig(model=str(folder), attacks=("direct", "ring_a_bell"), out=str(tmp_path / "r")))
    assert "ring_a_bell attack(s) optimise CLIP token embeddings" in str(e.value)
    assert "--attacks direct" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "r").exists()
