"""The UnlearnDiffAtk-style attack of `duo-unlearn eval`, on the bundled test bed (a trained SD1-architecture model
of coloured shapes: no fixture to pretrain, so the file stays well under a minute on one core)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from duo_unlearn.trainer.cli import main
from duo_unlearn.trainer.errors import Cancelled, UserError
from duo_unlearn.trainer.evaluate import EvalConfig, evaluate, summary_table
from duo_unlearn.trainer.evaluate.concept_inversion import denoising_loss
from duo_unlearn.trainer.evaluate.unlearn_diff_atk import check_room, check_steps, unlearn_diff_atk
from duo_unlearn.trainer.models import load_model
from duo_unlearn.trainer.testbed.shapes import full_prompt, random_spec, render

ATTACKED = ["a red circle on a white background", "a red circle on a gray background"]


def _images(specs, seed=0):
    """Rendered test-bed images and their prompts: (colour, shape, background) per image."""
    rng = np.random.default_rng(seed)
    out = [(Image.fromarray(render(random_spec(rng, colour=c, shape=s, background=b))), full_prompt(c, s, b))
           for c, s, b in specs]
    return [im for im, _ in out], [p for _, p in out]


def _state(pipe):
    """Everything the attack must leave as it found it."""
    modules = {"unet": pipe.unet, "text_encoder": pipe.text_encoder, "vae": pipe.vae}
    return {"weights": {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in modules.items()},
            "requires_grad": {n: [p.requires_grad for p in m.parameters()] for n, m in modules.items()},
            "training": {n: m.training for n, m in modules.items()},
            "tokenizer": len(pipe.tokenizer), "hooks": len(pipe.text_encoder.get_input_embeddings()._forward_hooks)}


@pytest.fixture(scope="module")
def attacked():
    pipe = load_model("testbed").pipe
    # a state the attack must restore: some flags on, the text encoder in training mode
    pipe.text_encoder.requires_grad_(True)
    pipe.unet.conv_in.requires_grad_(True)
    pipe.text_encoder.train()
    before = _state(pipe)
    images, prompts = _images([("red", "circle", "white")] * 2 + [("red", "square", "black")] * 4)
    found = unlearn_diff_atk(pipe, images, prompts, ATTACKED, tokens=5, steps=30, lr=1e-2, batch=4, seed=0,
                             check_every=10)
    return pipe, before, found


def test_attack_lowers_its_loss_with_real_vocabulary_prompts(attacked):
    pipe, _, found = attacked
    tok = pipe.tokenizer
    assert [f.prompt for f in found] == ATTACKED
    assert [f.images for f in found] == [2, 6]  # a prompt's own images where there are any, else all
    for f in found:
        print(f"[{f.prefix}] {f.found!r}: fixed-draw loss {f.eval_loss_before:.5f} -> {f.eval_loss_after:.5f} "
              f"(prompt alone {f.eval_loss_prompt:.5f})")
        assert f.eval_loss_after < f.eval_loss_before
        assert len(f.losses) == 30 and all(np.isfinite(f.losses))
        # the tokens are kept only where they beat the prompt alone
        candidate = f"{f.prefix} {f.prompt}"
        assert f.found == (candidate if f.eval_loss_after < f.eval_loss_prompt else f.prompt)
        # plain text: written out and tokenized again, it gives the model exactly the tokens optimised
        assert len(f.prefix_ids) == 5
        again = tok(candidate, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
        alone = tok(f.prompt, add_special_tokens=False).input_ids
        assert again[:1 + 5 + len(alone) + 1] == [tok.bos_token_id, *f.prefix_ids, *alone, tok.eos_token_id]
        assert all(tok.convert_ids_to_tokens(i).endswith("</w>") for i in f.prefix_ids)
    assert [f.kept for f in found] == [False, True]  # this seed shows both cases
    # the same seed and settings give the same prompts (the report is reproducible)
    images, prompts = _images([("red", "circle", "white")] * 2 + [("red", "square", "black")] * 4)
    again = unlearn_diff_atk(pipe, images, prompts, ATTACKED[:1], tokens=5, steps=30, lr=1e-2, batch=4, seed=0,
                             check_every=10)
    assert again[0].prefix == found[0].prefix and again[0].losses == found[0].losses


def test_the_checks_write_out_the_tokens_as_they_stood_after_their_step(attacked):
    pipe, _, found = attacked
    for f in found:
        assert len(f.checks) == 3 and f.checks[-1] == f"{f.prefix} {f.prompt}"
        assert all(c.endswith(f.prompt) for c in f.checks) and f.as_dict()["checks"] == f.checks
    # a run stopped after 10 steps ends where the 30-step run's first check (after step 10) stood
    images, prompts = _images([("red", "circle", "white")] * 2 + [("red", "square", "black")] * 4)
    short = unlearn_diff_atk(pipe, images, prompts, ATTACKED[:1], tokens=5, steps=10, lr=1e-2, batch=4, seed=0)
    assert short[0].checks == [found[0].checks[0]] and short[0].losses == found[0].losses[:10]
    assert len(set(found[0].checks + found[1].checks)) > 2  # the tokens move between checks on this seed
    with pytest.raises(ValueError, match="check_every must be a positive number of steps"):
        unlearn_diff_atk(pipe, images, prompts, ATTACKED[:1], steps=2, check_every=0)


@pytest.mark.parametrize("steps, every, expect", [(100, 20, [20, 40, 60, 80, 100]), (30, 20, [20, 30]),
                                                  (2, 20, [2]), (5, None, [5]), (3, 1, [1, 2, 3])])
def test_check_steps_are_every_n_and_the_last(steps, every, expect):
    assert check_steps(steps, every) == expect


def test_attack_leaves_the_pipeline_as_it_was(attacked):
    pipe, before, _ = attacked
    after = _state(pipe)
    assert after["tokenizer"] == before["tokenizer"] and after["hooks"] == before["hooks"] == 0
    assert after["requires_grad"] == before["requires_grad"] and after["training"] == before["training"]
    for name, weights in before["weights"].items():
        assert all(torch.equal(v, weights[k]) for k, v in after["weights"][name].items()), name
    # and so when it is stopped half-way (the tab's cancel button)
    images, prompts = _images([("red", "circle", "white")] * 2)
    with pytest.raises(Cancelled):
        unlearn_diff_atk(pipe, images, prompts, ATTACKED, steps=20, progress=lambda event: False)
    stopped = _state(pipe)
    assert {k: stopped[k] for k in ("requires_grad", "training", "tokenizer", "hooks")} == \
        {k: before[k] for k in ("requires_grad", "training", "tokenizer", "hooks")}


def test_denoising_loss_targets_epsilon_or_v():
    from diffusers import DDPMScheduler

    class Zero(torch.nn.Module):  # predicts 0, so the loss is the target's mean square
        dtype = torch.float32

        def forward(self, x, t, cond):
            return type("Out", (), {"sample": torch.zeros_like(x)})()

    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t, cond = torch.tensor([10, 900]), torch.zeros(2, 3, 8)
    eps = DDPMScheduler(prediction_type="epsilon")
    v = DDPMScheduler(prediction_type="v_prediction")
    assert denoising_loss(Zero(), eps, latents, noise, t, cond).item() == pytest.approx(noise.pow(2).mean().item())
    velocity = v.get_velocity(latents, noise, t)
    assert denoising_loss(Zero(), v, latents, noise, t, cond).item() == pytest.approx(velocity.pow(2).mean().item())


def _random_adapter(path):
    """A LoRA that changes the test bed's denoiser a lot: a different model for the attack to face."""
    from duo_unlearn.trainer.export import peft_to_kohya
    from duo_unlearn.trainer.lora import add_lora, lora_state

    unet = load_model("testbed").pipe.unet
    params = add_lora(unet, 4, 4.0, ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0"))
    g = torch.Generator().manual_seed(0)
    for p in params:
        p.data = torch.randn(p.shape, generator=g) * 0.3
    save_file(peft_to_kohya(lora_state(unet), 4.0), str(path), metadata={"duo.concept": "red"})
    return path


def test_evaluate_reports_the_attack(tmp_path):
    adapter = _random_adapter(tmp_path / "noisy.safetensors")
    out = tmp_path / "report"
    cfg = EvalConfig(model="testbed", adapters=(str(adapter),), attacks=("direct", "unlearndiffatk"),
                     images_per_prompt=1, max_prompts=2, sample_steps=3, ci_images=4, udatk_steps=4, udatk_check_every=2,
                     lpips_backbone="random", out=str(out), grid_columns=4)
    result = evaluate(cfg)
    info = result["attacks"]["unlearndiffatk"]
    assert info["settings"]["tokens"] == 5 and info["settings"]["steps"] == 4 and info["settings"]["lr"] == 1e-2
    assert info["settings"]["checks_after_steps"] == [2, 4]
    assert info["settings"]["images"] == 4 and info["settings"]["images_from"] == "generated by the base model"
    per_method = info["info"]["per_method"]
    assert list(per_method) == ["base", "negative prompt", "noisy"]
    assert per_method["negative prompt"] == per_method["base"]  # the same denoiser: attacked once
    # the adapter's model is attacked, not the base model's: other losses on the same draws
    assert [f["eval_loss_prompt"] for f in per_method["noisy"]] != [f["eval_loss_prompt"] for f in per_method["base"]]
    for name, r in result["results"].items():
        a = r["attacks"]["unlearndiffatk"]
        assert a["prompts"] == [f["found"] for f in per_method[name]]
        assert a["n_prompts"] == 2 and a["n"] == 2 == len(a["scores"]) and 0.0 <= a["dsr"] <= 1.0
        assert all(p.endswith(d) for p, d in zip(a["prompts"], ["a red circle on a white background",
                                                                 "a red square on a black background"]))
        # scored per image slot: the direct prompt's image and each check's on the same seed, the highest score wins
        direct, checks = r["attacks"]["direct"], a["checks"]
        assert len(checks) == 2 and all(f["checks"][-1].endswith(f["prompt"]) for f in per_method[name])
        assert a["scores"] == [max(s) for s in zip(direct["scores"], *(c["scores"] for c in checks))]
        assert a["dsr"] <= min(direct["dsr"], *(c["dsr"] for c in checks))
        # the found prompt is the last check's where its tokens were kept, else the direct prompt
        alone = a["found_prompts_alone"]["scores"]
        for i, f in enumerate(per_method[name]):
            assert alone[i] == (checks[-1]["scores"][i] if f["prefix_kept"] else direct["scores"][i])
    saved = json.loads((out / "report.json").read_text())
    assert saved["results"] == result["results"] and saved["settings"]["udatk_steps"] == 4
    assert (out / "grid_unlearndiffatk.png").exists()
    assert "DSR unlearndiffatk" in summary_table(result)


@pytest.mark.parametrize("options, expect", [
    ({"udatk_steps": 0}, "udatk_steps must be a positive integer"),
    ({"udatk_tokens": -1}, "udatk_tokens must be a positive integer"),
    ({"udatk_batch": 2.5}, "udatk_batch must be a positive integer"),
    ({"udatk_lr": float("nan")}, "udatk_lr must be a positive number"),
    ({"udatk_lr": 0}, "udatk_lr must be a positive number"),
    ({"udatk_tokens": 75}, "at most 74 of SD's 77"),
    ({"udatk_check_every": 0}, "udatk_check_every must be a positive integer"),
    ({"attacks": ("direct", "unlearndiffatc")}, "unknown attack(s) unlearndiffatc"),
])
def test_bad_options_are_user_errors(options, expect):
    with pytest.raises(UserError) as e:
        EvalConfig(**options).validate()
    assert expect in str(e.value) and "\n" not in str(e.value)


def test_bad_options_on_the_command_line_and_for_the_model(tmp_path, capsys):
    code = main(["eval", "--attacks", "direct,unlearndiffatk", "--udatk-steps", "0", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "udatk_steps must be a positive integer" in err[0]
    assert not (tmp_path / "r").exists()
    with pytest.raises(UserError, match="at most 13 adversarial tokens fit"):  # the test bed's prompts: 16 tokens
        check_room(load_model("testbed").pipe.tokenizer, 14)


def test_white_box_attacks_run_on_a_half_precision_model():
    """On a GPU the frozen model is fp16/bf16 while images, noise and the learnt vectors stay fp32."""
    from duo_unlearn.trainer.evaluate.concept_inversion import concept_inversion

    pipe = load_model("testbed").pipe.to(torch.bfloat16)
    images, prompts = _images([("red", "circle", "white")] * 4)
    found = unlearn_diff_atk(pipe, images, prompts, ATTACKED[:1], steps=2, batch=2)
    assert np.isfinite(found[0].eval_loss_after) and found[0].prefix
    inv = concept_inversion(pipe, images, ["a <t> circle"] * 4, "<t>", steps=2, batch=2)
    assert np.isfinite(inv.eval_loss_after)


def test_any_found_keeps_per_image_slot_the_try_that_shows_the_concept():
    from duo_unlearn.trainer.evaluate.dsr import DsrResult, any_found

    direct = DsrResult(0.5, 4, 2, [0.2, 0.6, 0.8, 0.3], 0.5)
    first_check = DsrResult(0.5, 4, 2, [0.9, 0.1, 0.7, 0.0], 0.5)
    last_check = DsrResult(0.75, 4, 1, [0.0, 0.0, 0.1, 0.55], 0.5)
    got = any_found(direct, first_check)
    assert got.scores == [0.9, 0.6, 0.8, 0.3] and got.found == 3 and got.dsr == 0.25 and got.n == 4
    assert any_found(direct, first_check, last_check).found == 4  # each slot needs only one try to show it
    assert any_found(direct, direct).dsr == any_found(direct).dsr == direct.dsr  # the direct prompt again: no gain
    with pytest.raises(ValueError, match="same image slots"):
        any_found(first_check, DsrResult(1.0, 1, 0, [0.0], 0.5))
