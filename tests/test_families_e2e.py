"""SDXL and SD3 through the whole project on tiny random pipelines: pairs -> training -> export -> diffusers loads
every module and the output changes; `unlearn` end to end; eval-style sampling with the adapter; `info`."""
import pytest
import torch

from duo_unlearn.trainer.config import LoraConfig, TrainConfig
from duo_unlearn.trainer.export import describe_adapter
from duo_unlearn.trainer.families import get_family
from duo_unlearn.trainer.models import load_model
from duo_unlearn.trainer.pairs import PairConfig, generate_pairs
from duo_unlearn.trainer.train import train
from tiny_families import build_tiny_sd3, build_tiny_sdxl
from tiny_models import logged_warnings

BUILDERS = {"sdxl": build_tiny_sdxl, "sd3": build_tiny_sd3}


@pytest.fixture(scope="module", params=["sdxl", "sd3"])
def family_model(request, tmp_path_factory):
    return request.param, BUILDERS[request.param](tmp_path_factory.mktemp(f"e2e_{request.param}"))


def _lora_layers(module, name):
    return [n for n, m in module.named_modules() if hasattr(m, "lora_A") and name in m.lora_A]


@pytest.mark.slow
def test_pairs_train_export_and_diffusers_loads_every_module(family_model, tmp_path):
    name, folder = family_model
    model = load_model(folder)
    assert model.family == name
    with logged_warnings() as said:
        stats = generate_pairs(PairConfig(out=str(tmp_path / "pairs"), model=str(folder),
                                          unsafe_prompts=("a red square",), safe_prompts=("a blue square",),
                                          num_pairs=2, sample_steps=2, batch_size=2), model=model)
    assert stats.made == 2 and (tmp_path / "pairs" / "safe" / "00001.png").exists()
    # SDXL's img2img casts its VAE twice per call, and diffusers warns each time although nothing is kept in fp32
    assert not [m for m in said if "should be kept in float32" in m]
    out = tmp_path / f"{name}.safetensors"
    result = train(TrainConfig(pairs=str(tmp_path / "pairs"), model=str(folder), out=str(out), steps=3, beta=100,
                               lr=1e-2, lam=10, lora=LoraConfig(rank=4, alpha=2.0), concept="red",
                               device="cpu",
                               preview_prompts=("a red square",), preview_steps=2), model=model)
    assert result.previews and result.previews[0].exists()
    family = get_family(name)
    info = describe_adapter(out)
    assert info["format"] == {"sdxl": "kohya", "sd3": "diffusers"}[name]
    assert info["is_duo"] and info["duo"]["family"] == name and info["metadata"]["ss_base_model_version"] == \
        family.metadata(model.pipe)["ss_base_model_version"]
    assert info["duo"]["lr"] == 1e-2
    # SDXL's kohya file scales by alpha / rank when loaded; SD3's diffusers file holds that scale in lora_B already
    assert info["metadata"]["ss_network_alpha"] == {"sdxl": "2.0", "sd3": "4.0"}[name]

    fresh = load_model(folder).pipe
    denoiser = family.denoiser(fresh)
    x = torch.randn(2, denoiser.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([300, 700]) if name == "sdxl" else torch.tensor([300.0, 700.0])
    cond = family.encode_prompts(fresh, [""], "cpu", 16).repeat(2)
    with torch.no_grad():
        before = family.predict(denoiser, x, t, cond)
        fresh.load_lora_weights(str(out), adapter_name="duo")
        after = family.predict(denoiser, x, t, cond)
    trained = _lora_layers(family.denoiser(model.pipe), "duo")
    assert len(_lora_layers(denoiser, "duo")) == len(trained) > 0  # every trained module loaded
    assert not torch.allclose(before, after, atol=1e-5)


@pytest.mark.slow
def test_unlearn_end_to_end_and_the_model_is_left_clean(family_model, tmp_path):
    from duo_unlearn.trainer.unlearn import UnlearnConfig, unlearn

    name, folder = family_model
    model = load_model(folder)
    results = unlearn(UnlearnConfig(preset="custom", model=str(folder), out=str(tmp_path / "u.safetensors"),
                                    unsafe_prompts=("a red circle",), safe_prompts=("a green circle",),
                                    num_pairs=2, steps=2, rank=4, preview=False, device="cpu"), model=model)
    assert results[0].adapter.exists()
    denoiser = get_family(name).denoiser(model.pipe)
    assert not _lora_layers(denoiser, "duo")  # the next job starts from the base model
    info = describe_adapter(results[0].adapter)
    recipe = get_family(name)
    assert info["duo"]["lr"] == pytest.approx(recipe.lr_base * 100 / 500)  # the family's official coupling


@pytest.mark.slow
def test_eval_direct_and_prompt_attacks_with_the_adapter(family_model, tmp_path):
    from duo_unlearn.trainer.evaluate import EvalConfig, evaluate

    name, folder = family_model
    model = load_model(folder)
    generate_pairs(PairConfig(out=str(tmp_path / "pairs"), model=str(folder), unsafe_prompts=("a red square",),
                              safe_prompts=("a blue square",), num_pairs=2, sample_steps=2, batch_size=2),
                   model=model)
    adapter = train(TrainConfig(pairs=str(tmp_path / "pairs"), model=str(folder), out=str(tmp_path / "a.safetensors"),
                                steps=2, beta=100, lr=5e-2, lam=0, lora=LoraConfig(rank=4, alpha=4.0),
                                concept="red", device="cpu"), model=model).adapter
    get_family(name).denoiser(model.pipe).delete_adapters("duo")
    common = dict(model=str(folder), adapters=(str(adapter),), images_per_prompt=1, max_prompts=2, sample_steps=2,
                  lpips_backbone="random", out=str(tmp_path / "report"), grid_columns=4)
    result = evaluate(EvalConfig(attacks=("direct", "prompts"), **common), model=model)
    adapted = result["results"]["a"]
    assert set(adapted["attacks"]) == {"direct", "prompts"}
    assert adapted["preservation"]["one_minus_lpips"] < 1.0  # the adapter was on while it sampled
    assert result["results"]["base"]["preservation"]["one_minus_lpips"] == 1.0


@pytest.mark.slow
def test_unlearn_on_sd3_without_t5_from_the_command_line(tmp_path):
    """--drop-t5 (a small card): the model loads without T5 and the adapter says so; other families refuse it."""
    from duo_unlearn.trainer.cli import main

    folder = build_tiny_sd3(tmp_path / "sd3")
    out = tmp_path / "u.safetensors"
    code = main(["unlearn", "--preset", "custom", "--model", str(folder), "--out", str(out), "--drop-t5",
                 "--unsafe-prompt", "a red circle", "--safe-prompt", "a green circle", "--num-pairs", "2",
                 "--steps", "2", "--rank", "4", "--no-preview", "--device", "cpu"])
    assert code == 0 and describe_adapter(out)["duo"]["t5_encoder"] == "dropped"
    assert main(["pairs", "--preset", "testbed-red", "--model", "testbed", "--drop-t5", "--num-pairs", "1",
                 "--out", str(tmp_path / "p")]) == 2
    assert not (tmp_path / "p").exists()
