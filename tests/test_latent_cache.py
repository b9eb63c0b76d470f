"""The pair-image cache: VAE passes sized by the resolution, and smaller passes instead of a failure when memory
runs out."""
import pytest
import torch

from duo_unlearn.trainer import latent_cache
from duo_unlearn.trainer.errors import UserError
from duo_unlearn.trainer.families import get_family
from duo_unlearn.trainer.latent_cache import build_cache, encode_batch
from duo_unlearn.trainer.models import load_model
from duo_unlearn.trainer.pair_dataset import read_pairs


def test_fewer_images_per_vae_pass_as_the_resolution_rises():
    assert encode_batch(64) == 8 and encode_batch(256) == 8 and encode_batch(512) == 4 and encode_batch(768) == 1
    assert encode_batch(1024) == 1 and encode_batch(2048) == 1  # never below one image


def test_out_of_memory_in_the_vae_halves_the_pass_and_gives_the_same_latents(tiny_model, pair_dir, monkeypatch):
    model = load_model(tiny_model)
    family = get_family(model.family)
    records = read_pairs(pair_dir)
    assert len(records) >= 3
    resolution = 32
    monkeypatch.setattr(latent_cache, "ENCODE_PIXELS", 8 * resolution * resolution)  # 8 per pass as asked
    whole = build_cache(model.pipe, family, records, pair_dir, "empty", "cpu", resolution, None)

    real, passes = latent_cache.posterior, []

    def scarce(vae, x, device):  # a card with room for 1 image per pass
        passes.append(len(x))
        if len(x) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(vae, x, device)

    monkeypatch.setattr(latent_cache, "posterior", scarce)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    halved = build_cache(model.pipe, family, records, pair_dir, "empty", "cpu", resolution, None)
    n = len(records)
    refused = [k for k in passes if k > 1]
    assert refused == [k for k in (8, 4, 2) if k <= n] or refused == [n] + [k for k in (4, 2) if k < n]
    assert passes.count(1) == 2 * n  # then every unsafe and safe image once, one at a time
    torch.testing.assert_close(halved.unsafe_mean, whole.unsafe_mean)
    torch.testing.assert_close(halved.safe_std, whole.safe_std)


def test_out_of_memory_at_one_image_per_pass_is_one_clear_error(tiny_model, pair_dir, monkeypatch):
    model = load_model(tiny_model)
    records = read_pairs(pair_dir)

    def none_fit(vae, x, device):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(latent_cache, "posterior", none_fit)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    with pytest.raises(UserError, match="out of GPU memory encoding one pair image at 32 px") as caught:
        build_cache(model.pipe, get_family(model.family), records, pair_dir, "empty", "cpu", 32, None)
    assert caught.value.__context__ is None  # the failed pass's tensors are not kept alive by the error
