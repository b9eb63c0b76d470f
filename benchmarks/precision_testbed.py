"""Mixed precision must not change what is learned: the test bed's red, unlearned in fp32 and in bf16 (frozen weights
bf16, LoRA fp32, preservation term in fp32), reaches the same held-out DSR and prior preservation within noise.

    python benchmarks/precision_testbed.py

Not part of the test suite: bf16 arithmetic on a CPU without native bf16 units is emulated and ran for more than
25 minutes on two shared cores (on a GPU it takes a minute). Prints the figures and exits 1 if they differ.
"""
import sys
import tempfile
from pathlib import Path

from duo_unlearn.trainer.config import TrainConfig
from duo_unlearn.trainer.evaluate import EvalConfig, evaluate
from duo_unlearn.trainer.models import load_model
from duo_unlearn.trainer.pairs import PairConfig, generate_pairs
from duo_unlearn.trainer.presets import get_preset
from duo_unlearn.trainer.train import train


def compare(tmp_path: Path) -> dict:
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
    figures["base"] = {"direct": report["results"]["base"]["attacks"]["direct"]["dsr"]}
    return figures


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        figures = compare(Path(tmp))
    print(f"held-out DSR and preservation: {figures}")
    alike = (all(figures[n]["direct"] >= figures["base"]["direct"] + 0.5 for n in ("fp32", "bf16"))
             and all(abs(figures["fp32"][k] - figures["bf16"][k]) <= 0.17 for k in ("direct", "synonyms"))
             and abs(figures["fp32"]["1-lpips"] - figures["bf16"]["1-lpips"]) <= 0.03)  # 24 images: 1 is 0.042
    return 0 if alike else 1


if __name__ == "__main__":
    sys.exit(main())
