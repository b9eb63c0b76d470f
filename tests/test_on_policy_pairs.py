"""On-policy pairs (trainer/on_policy_pairs.py): the erasure check's images that still show the concept become pairs."""
import pytest
import torch
from safetensors.torch import load_file

from duo_unlearn.trainer import detectors
from duo_unlearn.trainer import train as train_module
from duo_unlearn.trainer.config import TrainConfig
from duo_unlearn.trainer.erasure_stop import CHECK_IMAGES, same_stop_rule
from duo_unlearn.trainer.errors import Cancelled, UserError
from duo_unlearn.trainer.export import describe_adapter
from duo_unlearn.trainer.families import Conditioning
from duo_unlearn.trainer.latent_cache import LatentCache, posterior
from duo_unlearn.trainer.models import load_model
from duo_unlearn.trainer.pair_dataset import image_tensor
from duo_unlearn.trainer.train import train
from duo_unlearn.trainer.unlearn import UnlearnConfig, plan
from tiny_models import ScriptedDetector


class KeepingDetector(ScriptedDetector):
    """ScriptedDetector that also keeps the images of each call."""

    def __init__(self, found):
        super().__init__(found)
        self.images = []

    def scores(self, images):
        self.images.append(list(images))
        return super().scores(images)


def _cfg(pair_dir, tiny_model, out, **kw):
    return TrainConfig(**{"pairs": str(pair_dir), "model": str(tiny_model), "out": str(out), "beta": 5000,
                          "lr": 1e-3, "lam": 1000, "seed": 2, "preview_steps": 2, "stop_every": 3,
                          "stop_detector": "colour:red", "stop_erased": 0.99, "on_policy_pairs": True, **kw})


def _caught_cache(monkeypatch):
    caches = []
    build = train_module.build_cache

    def keep(*a, **k):
        caches.append(build(*a, **k))
        return caches[-1]

    monkeypatch.setattr(train_module, "build_cache", keep)
    return caches


def test_flagged_check_images_and_their_twins_become_pairs_drawn_from_then_on(tiny_model, pair_dir, tmp_path,
                                                                              monkeypatch):
    # check 1 flags its first 2 images, their twins are clean; check 2 (the last step) flags 1 and adds nothing
    detector = KeepingDetector(found=[2, 0, 1])
    monkeypatch.setattr(detectors, "make_detector", lambda spec: detector)
    caches = _caught_cache(monkeypatch)
    drawn = []
    sample = LatentCache.sample
    monkeypatch.setattr(LatentCache, "sample", lambda self, which, idx, gen: (
        drawn.append(idx.clone()), sample(self, which, idx, gen))[1])
    out = tmp_path / "grown.safetensors"
    messages = []
    result = train(_cfg(pair_dir, tiny_model, out, steps=6), progress=lambda e: messages.append(e.message))

    cache = caches[0]
    n0 = cache.pair_count() - 2
    assert [len(call) for call in detector.images] == [CHECK_IMAGES, 2, CHECK_IMAGES]  # no twins after the last
    assert [h.get("pairs_added") for h in result.history] == [None, None, 2, None, None, None]
    # the flagged images are the new losers, their twins the new winners, encoded as the dataset's images are
    vae = load_model(str(tiny_model)).pipe.vae
    for which, images in (("unsafe", detector.images[0][:2]), ("safe", detector.images[1])):
        mean, std = posterior(vae, torch.stack([image_tensor(im, cache.resolution) for im in images]), "cpu")
        assert torch.allclose(getattr(cache, f"{which}_mean")[n0:], mean, atol=1e-5)
        assert torch.allclose(getattr(cache, f"{which}_std")[n0:], std, atol=1e-5)
    # steps 1-3 draw from the dataset's pairs only, steps 4-6 from all of them (unsafe and safe draws alternate)
    assert max(int(i.max()) for i in drawn[:6]) < n0 and max(int(i.max()) for i in drawn[6:]) < n0 + 2
    assert any(int(i.max()) >= n0 for i in drawn[6:])
    assert any("2 of the check images that still show the concept became pairs" in m for m in messages)
    duo = describe_adapter(out)["duo"]
    assert duo["on_policy_pairs"] is True and duo["on_policy_added"] == [2] and duo["pairs"] == n0


def test_a_twin_that_keeps_the_concept_is_redrawn_then_dropped(tiny_model, pair_dir, tmp_path, monkeypatch):
    # check 1 flags 3; their twins: 1 still flagged, then again, then again (3 attempts): 2 pairs
    detector = KeepingDetector(found=[3, 1, 1, 1])
    monkeypatch.setattr(detectors, "make_detector", lambda spec: detector)
    result = train(_cfg(pair_dir, tiny_model, tmp_path / "a.safetensors", steps=4))
    assert [len(call) for call in detector.images] == [CHECK_IMAGES, 3, 1, 1, CHECK_IMAGES]
    assert [h["pairs_added"] for h in result.history if "pairs_added" in h] == [2]


def test_no_pairs_are_made_when_the_check_stops_training(tiny_model, pair_dir, tmp_path, monkeypatch):
    detector = KeepingDetector(found=[1])  # 23 of 24 erased: stops at 0.95
    monkeypatch.setattr(detectors, "make_detector", lambda spec: detector)
    result = train(_cfg(pair_dir, tiny_model, tmp_path / "a.safetensors", steps=9, stop_erased=0.95))
    assert result.steps == 3 and len(detector.images) == 1
    assert describe_adapter(tmp_path / "a.safetensors")["duo"]["on_policy_added"] == []


def test_resume_keeps_the_pairs_made_before_the_checkpoint(tiny_model, pair_dir, tmp_path, monkeypatch):
    script = [2, 0, 1, 0, 0]  # checks at 3, 6 (each adding pairs), 9 (the last)
    monkeypatch.setattr(detectors, "make_detector", lambda spec: ScriptedDetector(script))
    whole = tmp_path / "whole.safetensors"
    whole_run = train(_cfg(pair_dir, tiny_model, whole, steps=9))
    assert [h["pairs_added"] for h in whole_run.history if "pairs_added" in h] == [2, 1]

    parted = tmp_path / "parted.safetensors"

    def stop_at_8(event):
        if event.stage == "train" and event.step == 8:
            return False
    with pytest.raises(Cancelled):
        train(_cfg(pair_dir, tiny_model, parted, steps=9, checkpoint_every=6), progress=stop_at_8)
    # the resumed run's first check is the whole run's third
    monkeypatch.setattr(detectors, "make_detector", lambda spec: ScriptedDetector([0]))
    resumed = train(_cfg(pair_dir, tiny_model, parted, steps=9, checkpoint_every=6, resume=True))
    assert [h.get("pairs_added") for h in resumed.history] == [h.get("pairs_added") for h in whole_run.history]
    a, b = load_file(str(whole)), load_file(str(parted))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_added_pairs_take_their_conditioning_rows_from_a_pair_of_the_same_prompt():
    rows = Conditioning({"encoder_hidden_states": torch.arange(3.0).view(3, 1, 1)})
    cache = LatentCache(*(torch.zeros(3, 4, 2, 2) for _ in range(4)), 1.0, 0.0, rows.rows(torch.tensor([0])),
                        unsafe_cond=rows, safe_cond=rows)  # "unsafe" conditioning: one object for both
    new = {k: torch.ones(2, 4, 2, 2) for k in ("unsafe_mean", "unsafe_std", "safe_mean", "safe_std")}
    cache.add_pairs(new | {"source": torch.tensor([2, 0])})
    assert cache.pair_count() == 5 and cache.safe_cond is cache.unsafe_cond
    assert cache.unsafe_cond.kwargs["encoder_hidden_states"].flatten().tolist() == [0, 1, 2, 2, 0]
    assert torch.equal(cache.condition("unsafe", torch.tensor([3])).kwargs["encoder_hidden_states"],
                       torch.tensor([[[2.0]]]))


@pytest.mark.parametrize("kw, words", [
    ({"stop_every": 0}, "on_policy_pairs takes its pairs from the erasure check's images: set stop_every"),
    ({"method": "esd"}, "on_policy_pairs adds DUO pairs; method 'esd'"),
])
def test_on_policy_pairs_without_what_it_needs_is_refused_in_one_line(kw, words, pair_dir, tiny_model, tmp_path):
    with pytest.raises(UserError, match=words):
        _cfg(pair_dir, tiny_model, tmp_path / "a.safetensors", **{"steps": 6, **kw}).validate()


def test_unlearn_takes_the_presets_setting_only_where_the_check_runs():
    def train_cfg(**kw):
        return plan(UnlearnConfig(preset="testbed-red", **kw))[1][0].train

    assert train_cfg().on_policy_pairs is False  # the SD 1.x preset: off
    assert train_cfg(on_policy_pairs=True).on_policy_pairs is True
    with pytest.raises(UserError, match="set stop_every"):  # asked for by name where no check runs
        train_cfg(on_policy_pairs=True, stop_every=0)


def test_an_adapter_is_reused_only_for_the_same_choice():
    with_pairs = {"stop_every": 75, "stop_erased": 0.85, "on_policy_pairs": True}
    cfg = TrainConfig(pairs="p", out="a.safetensors", stop_every=75, stop_detector="colour:red")
    assert not same_stop_rule(with_pairs, cfg)
    assert same_stop_rule({"stop_every": 75, "stop_erased": 0.85}, cfg)  # adapters from before: off
    cfg.on_policy_pairs = True
    assert same_stop_rule(with_pairs, cfg)


@pytest.mark.parametrize("name", ["sdxl", "sd3"])
def test_on_policy_pairs_on_the_other_families(name, tmp_path, monkeypatch):
    from duo_unlearn.trainer.config import LoraConfig
    from duo_unlearn.trainer.pairs import PairConfig, generate_pairs
    from tiny_families import build_tiny_sd3, build_tiny_sdxl

    folder = {"sdxl": build_tiny_sdxl, "sd3": build_tiny_sd3}[name](tmp_path / "model")
    model = load_model(folder)
    generate_pairs(PairConfig(out=str(tmp_path / "pairs"), model=str(folder), unsafe_prompts=("a red square",),
                              safe_prompts=("a blue square",), num_pairs=2, sample_steps=2, batch_size=2), model=model)
    detector = KeepingDetector(found=[2, 0])
    monkeypatch.setattr(detectors, "make_detector", lambda spec: detector)
    caches = _caught_cache(monkeypatch)
    result = train(TrainConfig(pairs=str(tmp_path / "pairs"), model=str(folder), out=str(tmp_path / "a.safetensors"),
                               steps=4, beta=100, lr=1e-2, lam=10, lora=LoraConfig(rank=4, alpha=4.0), device="cpu",
                               preview_steps=2, stop_every=2, stop_detector="colour:red", stop_erased=0.99,
                               on_policy_pairs=True), model=model)
    assert [h["pairs_added"] for h in result.history if "pairs_added" in h] == [2]
    assert caches[0].pair_count() == 4 and detector.images[1][0].size == detector.images[0][0].size
