"""Mixed precision must not change what is learned: the test bed's red, unlearned in fp32 and in bf16 (frozen weights
bf16, LoRA fp32, preservation term in fp32), reaches the same held-out DSR and prior preservation within noise.

    python benchmarks/precision_testbed.py

Not part of the test suite: about 10 minutes on a CPU with native bf16 (AVX512-BF16), far longer where bf16 is
emulated. Prints the figures, writes them to precision_testbed.json, and exits 1 if they differ.
"""
import json
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from duo_unlearn.trainer.evaluate import EvalConfig, evaluate
from duo_unlearn.trainer.lora import remove_lora
from duo_unlearn.trainer.models import load_model
from duo_unlearn.trainer.pairs import generate_pairs
from duo_unlearn.trainer.train import train
from duo_unlearn.trainer.unlearn import UnlearnConfig, plan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from efficacy_testbed import write_section  # noqa: E402


def compare(tmp_path: Path) -> dict:
    """The preset's own recipe (what `duo-unlearn unlearn` runs), trained twice on the same pairs."""
    _, (recipe,) = plan(UnlearnConfig(preset="testbed-red", out=str(tmp_path / "red.safetensors"), device="cpu",
                                      preview=False, pairs_dir=str(tmp_path / "pairs")))
    model = load_model("testbed")
    generate_pairs(recipe.pairs, model=model)
    adapters, seconds = {}, {}
    for precision in ("no", "bf16"):
        started = time.time()
        result = train(replace(recipe.train, out=str(tmp_path / f"red_{precision}.safetensors"),
                               mixed_precision=precision), model=model)
        remove_lora(model.pipe.unet)
        adapters[precision] = result.adapter
        seconds[precision] = round(time.time() - started)
        print(f"{precision}: trained in {seconds[precision]} s", flush=True)
    report = evaluate(EvalConfig(model="testbed", preset="testbed-red", adapters=tuple(map(str, adapters.values())),
                                 attacks=("direct", "prompts"), images_per_prompt=4, negative_prompt="",
                                 lpips_backbone="random", out=str(tmp_path / "eval"), device="cpu"), model=model)
    fp32, bf16 = report["results"]["red_no"], report["results"]["red_bf16"]
    figures = {name: {"direct": r["attacks"]["direct"]["dsr"], "synonyms": r["attacks"]["prompts"]["dsr"],
                      "1-lpips": r["preservation"]["one_minus_lpips"]} for name, r in (("fp32", fp32), ("bf16", bf16))}
    figures["base"] = {"direct": report["results"]["base"]["attacks"]["direct"]["dsr"]}
    figures["train_seconds"] = {"fp32": seconds["no"], "bf16": seconds["bf16"]}
    return figures


def section(figures: dict) -> str:
    """This benchmark's section of RESULTS.md, from its JSON record."""
    rows = [f"| {name} | {figures[name]['direct']:.3f} | {figures[name]['synonyms']:.3f} | "
            f"{figures[name]['1-lpips']:.3f} | {figures['train_seconds'][name]} |" for name in ("fp32", "bf16")]
    native = {True: "native bf16 (AVX512-BF16)", False: "bf16 emulated", None: "bf16 support unknown"}
    return "\n".join([
        "## Mixed precision on the test bed (`benchmarks/precision_testbed.py`)", "",
        "The `testbed-red` preset's recipe (what `duo-unlearn unlearn` runs), trained twice on the same pairs, once "
        "in fp32 and once under bf16 (frozen weights bf16, LoRA and optimizer fp32, the preservation and retain "
        "terms in fp32), then evaluated together (4 seeds per prompt, LPIPS with a random trunk):", "",
        "| precision | DSR direct | DSR synonyms | 1 − LPIPS | train s |", "|---|---|---|---|---|", *rows, "",
        f"Base model DSR direct: {figures['base']['direct']:.3f}. One image of 24 moves a DSR by 0.042; the script "
        "fails when the DSRs differ by more than 0.17 or 1 − LPIPS by more than 0.03. Recorded "
        f"{figures['recorded']}, {native[figures.get('bf16_native')]}, torch {figures['torch']}. On this CPU the "
        "bf16 run is no slower than fp32; a GPU figure needs a GPU run (`benchmarks/gpu_memory.py`)."])


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        figures = compare(Path(tmp))
    print(f"held-out DSR and preservation: {figures}")
    figures["recorded"] = f"{time.strftime('%Y-%m-%d')}, CPU {platform.machine()}, {torch.get_num_threads()} thread(s)"
    figures["bf16_native"] = "avx512_bf16" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() \
        else None
    figures["torch"] = torch.__version__
    Path(__file__).with_suffix(".json").write_text(json.dumps(figures, indent=2) + "\n")
    write_section(Path(__file__).with_name("RESULTS.md"), section(figures), "precision_testbed")
    alike = (all(figures[n]["direct"] >= figures["base"]["direct"] + 0.5 for n in ("fp32", "bf16"))
             and all(abs(figures["fp32"][k] - figures["bf16"][k]) <= 0.17 for k in ("direct", "synonyms"))
             and abs(figures["fp32"]["1-lpips"] - figures["bf16"]["1-lpips"]) <= 0.03)  # 24 images: 1 is 0.042
    return 0 if alike else 1


if __name__ == "__main__":
    sys.exit(main())
