"""The retain set: made with the pairs, resumable, and used by training only when lam_retain > 0."""
import json

import pytest
import torch

from duo_unlearn.trainer.config import TrainConfig
from duo_unlearn.trainer.errors import UserError
from duo_unlearn.trainer.models import load_model
from duo_unlearn.trainer.pairs import PairConfig, generate_pairs
from duo_unlearn.trainer.retain_set import RETAIN_INDEX, read_retain
from duo_unlearn.trainer.train import train


def _cfg(out, model, **kw):
    base = dict(out=str(out), model=str(model), unsafe_prompts=("a red square",), safe_prompts=("a blue square",),
                num_pairs=4, batch_size=2, sample_steps=3, seed=1,
                retain_prompts=("a orange circle", "a gray square"), num_retain=5)
    return PairConfig(**(base | kw))


@pytest.fixture(scope="module")
def loaded(tiny_model):
    return load_model(tiny_model)


@pytest.fixture(scope="module")
def retain_pairs(tiny_model, loaded, tmp_path_factory):
    folder = tmp_path_factory.mktemp("retain") / "d"
    generate_pairs(_cfg(folder, tiny_model), model=loaded)
    return folder


def test_retain_images_are_made_with_the_pairs(retain_pairs):
    records = read_retain(retain_pairs)
    assert [r.prompt for r in records] == ["a orange circle"] * 3 + ["a gray square"] * 2
    assert len({r.seed for r in records}) == 5 and all((retain_pairs / r.image).is_file() for r in records)


def test_an_interrupted_retain_set_is_completed_identically(retain_pairs, tiny_model, loaded, tmp_path):
    import shutil

    part = tmp_path / "part"
    shutil.copytree(retain_pairs, part)
    lines = (part / RETAIN_INDEX).read_text().splitlines()
    (part / RETAIN_INDEX).write_text("\n".join(lines[:2]) + "\n")  # as if stopped after the first block
    for r in read_retain(retain_pairs)[2:]:
        (part / r.image).unlink()
    events = []
    generate_pairs(_cfg(part, tiny_model), events.append, model=loaded)
    # its own stage, counted on the whole set; one line, which says what was already there
    retain = [e for e in events if e.stage == "retain"]
    assert [(e.step, e.total) for e in retain] == [(4, 5), (5, 5)]
    assert [e.message for e in retain if e.message] == ["retain set: 5 images of the prompts to keep, 2 already made"]
    assert (part / RETAIN_INDEX).read_text() == (retain_pairs / RETAIN_INDEX).read_text()
    for r in read_retain(retain_pairs):
        assert (part / r.image).read_bytes() == (retain_pairs / r.image).read_bytes()


def test_the_retain_term_trains_and_changes_the_adapter(retain_pairs, tiny_model, loaded, tmp_path):
    from safetensors.torch import load_file

    logs = []
    common = dict(pairs=str(retain_pairs), model=str(tiny_model), steps=6, beta=100, lr=1e-3, lam=0.0)
    train(TrainConfig(out=str(tmp_path / "plain.safetensors"), **common), model=loaded)
    train(TrainConfig(out=str(tmp_path / "retain.safetensors"), lam_retain=1e4, **common),
          progress=lambda e: logs.append(e.logs) if e.logs else None, model=loaded)
    retained = [l["retain"] for l in logs if "retain" in l]
    assert len(retained) == 6 and retained[0] == 0.0 and max(retained) > 0  # zero at start: the adapter is off
    a, b = load_file(str(tmp_path / "plain.safetensors")), load_file(str(tmp_path / "retain.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    from duo_unlearn.trainer.export import decode_duo, read_metadata

    facts = decode_duo(read_metadata(tmp_path / "retain.safetensors"))
    assert (facts["retain_images"], facts["lambda_retain"]) == (5, 1e4)


def test_lam_retain_without_a_retain_set_is_one_clear_error(pair_dir, tiny_model, tmp_path):
    with pytest.raises(UserError, match="retain set"):
        train(TrainConfig(pairs=str(pair_dir), model=str(tiny_model), out=str(tmp_path / "x.safetensors"),
                          steps=1, lam_retain=1.0))
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("kw, message", [({"num_retain": -1}, "num_retain"),
                                         ({"retain_prompts": ()}, "retain set needs prompts")])
def test_bad_retain_settings(tmp_path, tiny_model, kw, message):
    with pytest.raises(UserError, match=message):
        generate_pairs(_cfg(tmp_path / "d", tiny_model, **kw))


def test_a_retain_index_pointing_outside_is_refused(retain_pairs, tmp_path):
    import shutil

    folder = tmp_path / "d"
    shutil.copytree(retain_pairs, folder)
    (folder / RETAIN_INDEX).write_text(json.dumps({"id": "0", "image": "../../etc/passwd", "prompt": "x"}) + "\n")
    with pytest.raises(UserError, match="outside the dataset folder"):
        read_retain(folder)


def test_erasure_checks_leave_a_retain_run_unchanged(retain_pairs, tiny_model, loaded, tmp_path, monkeypatch):
    from duo_unlearn.trainer import detectors
    from duo_unlearn.trainer.erasure_stop import CHECK_IMAGES
    from safetensors.torch import load_file
    from tiny_models import ScriptedDetector

    common = dict(pairs=str(retain_pairs), model=str(tiny_model), steps=6, beta=100, lr=1e-3, lam=0.0, seed=4,
                  lam_retain=1e4, preview_steps=2)
    monkeypatch.setattr(detectors, "make_detector", lambda spec: ScriptedDetector([CHECK_IMAGES] * 3))
    train(TrainConfig(out=str(tmp_path / "checked.safetensors"), stop_every=2, stop_detector="colour:red", **common),
          model=loaded)
    train(TrainConfig(out=str(tmp_path / "plain.safetensors"), **common), model=loaded)
    a, b = load_file(str(tmp_path / "checked.safetensors")), load_file(str(tmp_path / "plain.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the checks draw nothing from the training stream


def test_the_retain_term_draws_its_timesteps_in_its_own_band(retain_pairs, tiny_model, loaded, tmp_path,
                                                              monkeypatch):
    from duo_unlearn.trainer import steps
    from duo_unlearn.trainer.export import decode_duo, read_metadata

    seen = {"pairs": [], "retain": []}
    real = steps.METHODS["duo"]

    def spy(ctx, idx, gen):
        draw = real.draw(ctx, idx, gen)
        seen["pairs"] += draw["t_lose"].tolist() + draw["t_win"].tolist()
        seen["retain"] += draw["t_retain"].tolist()
        return draw

    monkeypatch.setitem(steps.METHODS, "duo", steps.Method(spy, real.loss_on))
    out = tmp_path / "band.safetensors"
    train(TrainConfig(pairs=str(retain_pairs), model=str(tiny_model), out=str(out), steps=5, beta=100, lr=1e-3,
                      lam=0.0, lam_retain=1e4, t_max=400, retain_t_min=900, retain_t_max=1000), model=loaded)
    assert len(seen["retain"]) == len(seen["pairs"]) // 2 > 0 and all(900 <= t < 1000 for t in seen["retain"])
    assert seen["pairs"] and all(0 <= t < 400 for t in seen["pairs"])
    assert decode_duo(read_metadata(out))["retain_t_range"] == [900, 1000]


@pytest.mark.parametrize("kw", [{"retain_t_min": 900, "retain_t_max": 900}, {"retain_t_min": -1},
                                {"retain_t_max": 1001}, {"t_max": 500, "retain_t_min": 600}])
def test_a_retain_band_outside_the_schedule_is_refused(kw):
    with pytest.raises(UserError, match="retain_t_min < retain_t_max"):
        TrainConfig(lam_retain=1.0, **kw).validate()
