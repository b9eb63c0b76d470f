"""Training that stops once the concept is gone from the adapter's own samples (trainer/erasure_stop.py)."""
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from duo_unlearn.trainer import detectors
from duo_unlearn.trainer.config import TrainConfig
from duo_unlearn.trainer.erasure_stop import CHECK_IMAGES
from duo_unlearn.trainer.errors import UserError
from duo_unlearn.trainer.export import describe_adapter
from duo_unlearn.trainer.train import train
from duo_unlearn.trainer.unlearn import UnlearnConfig, plan
from tiny_models import ScriptedDetector


def _use(monkeypatch, detector):
    monkeypatch.setattr(detectors, "make_detector", lambda spec: detector)


def _cfg(pair_dir, tiny_model, out, **kw):
    return TrainConfig(pairs=str(pair_dir), model=str(tiny_model), out=str(out), beta=5000, lr=1e-3, lam=1000,
                       seed=2, preview_steps=2, **kw)


def _same(a, b) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_training_stops_at_the_first_check_that_reads_the_concept_gone(tiny_model, pair_dir, tmp_path, monkeypatch):
    detector = ScriptedDetector(found=[CHECK_IMAGES, 1])  # check 1: all found; check 2: all but one erased
    _use(monkeypatch, detector)
    out = tmp_path / "stopped.safetensors"
    messages = []
    result = train(_cfg(pair_dir, tiny_model, out, steps=12, stop_every=3, stop_detector="colour:red"),
                   progress=lambda e: messages.append(e.message))
    assert result.steps == 6 and len(result.history) == 6
    assert detector.shown == [CHECK_IMAGES, CHECK_IMAGES]
    assert [h.get("erased") for h in result.history if "erased" in h] == [0.0, pytest.approx(1 - 1 / CHECK_IMAGES)]
    duo = describe_adapter(out)["duo"]
    assert duo["steps"] == 6 and duo["max_steps"] == 12 and duo["stop_detector"] == "scripted"
    assert duo["last_check_erased"] == pytest.approx(1 - 1 / CHECK_IMAGES) and duo["erased_target_met"] is True
    assert not any(m.startswith("warning") for m in messages)

    # the checks sample with their own generators: the stopped run is the plain 6-step run, bit for bit
    plain = tmp_path / "plain6.safetensors"
    train(_cfg(pair_dir, tiny_model, plain, steps=6))
    assert _same(out, plain)


def test_a_concept_that_stays_means_all_steps_and_a_warning(tiny_model, pair_dir, tmp_path, monkeypatch):
    detector = ScriptedDetector(found=[CHECK_IMAGES, CHECK_IMAGES, 2, 2])
    _use(monkeypatch, detector)
    out = tmp_path / "full.safetensors"
    messages = []
    result = train(_cfg(pair_dir, tiny_model, out, steps=10, stop_every=3, stop_detector="colour:red",
                        stop_erased=0.95), progress=lambda e: messages.append(e.message))
    assert result.steps == 10
    assert [h["step"] for h in result.history if "erased" in h] == [3, 6, 9, 10]  # and the adapter one gets
    duo = describe_adapter(out)["duo"]
    assert duo["steps"] == 10 and duo["erased_target_met"] is False
    assert duo["last_check_erased"] == pytest.approx(1 - 2 / CHECK_IMAGES)
    assert any(m.startswith("warning: after all 10 steps the concept is still in 8% of the check images")
               for m in messages)
    plain = tmp_path / "plain10.safetensors"
    train(_cfg(pair_dir, tiny_model, plain, steps=10))
    assert _same(out, plain)


@pytest.mark.parametrize("kw, words", [
    (dict(stop_every=5), "stop_detector"),
    (dict(stop_every=5, stop_detector="none"), "stop_detector"),
    (dict(stop_every=5, stop_detector="colour:red", stop_erased=0), "stop_erased"),
    (dict(stop_every=5, stop_detector="colour:red", stop_erased=1.5), "stop_erased"),
    (dict(stop_every=-1, stop_detector="colour:red"), "stop_every"),
])
def test_wrong_stop_settings_are_refused_by_name(kw, words):
    with pytest.raises(UserError, match=words):
        TrainConfig(pairs="p", **kw).validate()


def test_an_unknown_stop_detector_is_one_line_and_exit_2_before_anything_loads(pair_dir, tmp_path):
    out = tmp_path / "x.safetensors"
    run = subprocess.run([sys.executable, "-m", "duo_unlearn.trainer.cli", "train", "--pairs", str(pair_dir),
                          "--model", str(tmp_path / "no-such-model"), "--out", str(out), "--stop-every", "10",
                          "--stop-detector", "sharpness"], capture_output=True, text=True)
    assert run.returncode == 2
    assert "unknown detector 'sharpness'" in run.stderr and "Traceback" not in run.stderr
    assert not out.exists()


def test_unlearn_reads_the_samples_with_the_detector_that_gated_the_pairs():
    _, [p] = plan(UnlearnConfig(preset="testbed-red", stop_every=150, stop_erased=0.8))
    assert (p.train.stop_every, p.train.stop_detector, p.train.stop_erased) == (150, "colour:red", 0.8)
    _, [nudity] = plan(UnlearnConfig(preset="nudity", model="testbed", stop_every=100))
    assert nudity.train.stop_detector == nudity.pairs.detector == "nudenet"

    _, [off] = plan(UnlearnConfig(preset="testbed-red", stop_every=0))
    assert off.train.stop_every == 0 and off.train.stop_detector == "none"
    for asked in (dict(preset="testbed-red", detector="none"), dict(preset="violence", model="testbed")):
        with pytest.raises(UserError, match="--stop-every needs a detector"):
            plan(UnlearnConfig(stop_every=50, **asked))


def test_comfyui_reuses_an_adapter_that_stopped_early_and_not_one_of_another_rule(tmp_path, monkeypatch):
    from duo_unlearn.nodes import unlearn_node

    out = tmp_path / "duo_red.safetensors"
    _, [p] = plan(UnlearnConfig(preset="testbed-red", out=str(out)))
    facts = {"preset": "testbed-red", "concept": "red", "kappa": p.train.kappa, "seed": 0, "base_model": "testbed",
             "method": "duo", "lambda_retain": p.train.lam_retain, "retain_images": p.pairs.num_retain,
             "unsafe_prompts": [], "safe_prompts": [], "steps": 300, "max_steps": p.train.steps,
             "stop_every": p.train.stop_every, "stop_erased": p.train.stop_erased,
             "concept_directions": p.train.concept_directions, "close_concepts": list(p.train.close_concepts),
             "close_weight": p.train.close_weight, "target_modules": list(p.train.lora.target_modules)}
    out.write_bytes(b"")
    monkeypatch.setattr(unlearn_node, "read_facts", lambda path: {"facts": facts})
    assert unlearn_node._same_training(out, p, "testbed-red", "testbed")  # stopped at 300 of at most 900: this run
    facts["stop_erased"] = 0.85 if p.train.stop_erased != 0.85 else 0.95
    assert not unlearn_node._same_training(out, p, "testbed-red", "testbed")
    for key in ("max_steps", "stop_every", "stop_erased"):  # the preset before the rule: a fixed 300 steps
        facts.pop(key)
    assert not unlearn_node._same_training(out, p, "testbed-red", "testbed")


def test_on_an_accelerator_the_check_draws_four_images_at_a_time_with_the_same_seeds(monkeypatch):
    import contextlib
    from types import SimpleNamespace

    from duo_unlearn.trainer import previews, runtime
    from duo_unlearn.trainer.erasure_stop import CHECK_SEED, DEVICE_BATCH, ErasureCheck

    calls = []

    def fake_generate(pipe, prompts, seed, steps, guidance, negative_prompt=None):
        calls.append((len(prompts), seed))
        return [None] * len(prompts)

    monkeypatch.setattr(previews, "generate_images", fake_generate)
    # no GPU here: nothing is moved
    monkeypatch.setattr(runtime, "placed_for_sampling", lambda pipe, rt, wait_after=(): contextlib.nullcontext())
    family = SimpleNamespace(text_modules=lambda pipe: [])
    for device, expected in (("cuda", [(DEVICE_BATCH, CHECK_SEED + lo) for lo in range(0, CHECK_IMAGES, DEVICE_BATCH)]),
                             ("cpu", [(CHECK_IMAGES, CHECK_SEED)])):
        calls.clear()
        check = ErasureCheck(ScriptedDetector([3]), ["a red square"] * CHECK_IMAGES, 10, 0.85, 2, 5.0)
        rt = SimpleNamespace(device=torch.device(device), autocast=contextlib.nullcontext)
        assert check.erased(None, torch.nn.Linear(1, 1), family, rt) == pytest.approx(1 - 3 / CHECK_IMAGES)
        assert calls == expected
