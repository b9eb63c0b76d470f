"""Mixed precision must not change what is learned: the test bed's red, unlearned in fp32 and in bf16 (frozen weights
bf16, LoRA fp32, preservation term in fp32), reaches the same held-out DSR and prior preservation within noise."""
import pytest

from duo_unlearn.trainer.config import TrainConfig
from duo_unlearn.trainer.evaluate import EvalConfig, evaluate
from duo_unlearn.trainer.models import load_model
from duo_unlearn.trainer.pairs import PairConfig, generate_pairs
from duo_unlearn.trainer.presets import get_preset
from duo_unlearn.trainer.train import train


@pytest.mark.slow
def test_bf16_and_fp32_unlearn_red_alike(tmp_path):
    preset = get_preset("testbed-red")
    concept = preset.concepts[0]
    model = load_model("testbed")
    generate_pairs(PairConfig(out=str(tmp_path / "pairs"), model="testbed", unsafe_prompts=concept.unsafe_prompts,
                              safe_prompts=concept.safe_prompts, num_pairs=preset.num_pairs, strength=preset.strength,
                              guidance=preset.guidance, sample_steps=preset.sample_steps, detector=preset.detector,
                              device="cpu"), model=model)
    adapters = {}
    for precision in ("no", "bf16"):
        result = train(TrainConfig(pairs=str(tmp_path / "pairs"), model="testbed", concept="red",
                                   out=str(tmp_path / f"red_{precision}.safetensors"), beta=preset.beta,
                                   lam=preset.lam, lr=preset.lr, steps=preset.steps, mixed_precision=precision,
                                   device="cpu"), model=model)
        model.pipe.unet.delete_adapters("duo")
        adapters[precision] = result.adapter
    report = evaluate(EvalConfig(model="testbed", preset="testbed-red", adapters=tuple(map(str, adapters.values())),
                                 attacks=("direct", "prompts"), images_per_prompt=4, negative_prompt="",
                                 lpips_backbone="random", out=str(tmp_path / "eval"), device="cpu"), model=model)
    fp32, bf16 = report["results"]["red_no"], report["results"]["red_bf16"]
    figures = {name: {"direct": r["attacks"]["direct"]["dsr"], "synonyms": r["attacks"]["prompts"]["dsr"],
                      "1-lpips": r["preservation"]["one_minus_lpips"]} for name, r in (("fp32", fp32), ("bf16", bf16))}
    print(f"held-out DSR and preservation: {figures}")
    base = report["results"]["base"]["attacks"]["direct"]["dsr"]
    for name in ("fp32", "bf16"):
        assert figures[name]["direct"] >= base + 0.5, figures  # both unlearn red
    for key in ("direct", "synonyms"):  # 24 images each: one image is 0.042
        assert abs(figures["fp32"][key] - figures["bf16"][key]) <= 0.17, figures
    assert abs(figures["fp32"]["1-lpips"] - figures["bf16"]["1-lpips"]) <= 0.03, figures
