"""Peak memory of one output-preservation pass under bf16 frozen weights: the whole model upcast to float32 for the
pass (the trainer until 2026-12-04) against one layer at a time (trainer.steps.context._upcast_per_layer).

    python benchmarks/preservation_memory.py            # SDXL's UNet at full size, on the CPU (about 3 minutes)
    python benchmarks/preservation_memory.py --tiny     # the test bed's shapes, seconds (the test suite runs this)

Each strategy runs in its own process: build the UNet in bf16 with a rank-32 self-attention LoRA (random weights),
then one pass as StepContext.preservation takes it (policy forward in float32 with grad, reference forward with the
adapter off, backward) on 1 row at --size px, while a thread samples the process's resident memory every 5 ms.
It prints the peak rise over the resident memory before the pass. Memory of weights does not depend on the device,
so the CPU shows what a GPU's allocator would hold for the weights; activations add the same to both strategies.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

GiB = 2**30
HERE = Path(__file__).resolve().parent


@contextmanager
def upcast_whole_model(params):
    """The former strategy: every frozen half weight float32 for the whole pass."""
    dtypes = [p.dtype for p in params]
    for p in params:
        p.data = p.data.float()
    try:
        yield
    finally:
        for p, dtype in zip(params, dtypes):
            p.data = p.data.to(dtype)


def one_pass(strategy: str, tiny: bool, size: int) -> dict:
    import psutil
    import torch
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    sys.path.insert(0, str(HERE))
    import gpu_memory

    from duo_unlearn.trainer.lora import adapters_disabled
    from duo_unlearn.trainer.steps.context import _full_precision_kernels, _half_frozen, _upcast_per_layer

    config = (gpu_memory.TINY_FAMILIES if tiny else gpu_memory.FAMILIES)["sdxl"]["unet"]
    torch.manual_seed(0)
    with gpu_memory.default_dtype(torch.bfloat16):
        unet = UNet2DConditionModel(**config)
    unet.add_adapter(LoraConfig(r=gpu_memory.RANK, lora_alpha=gpu_memory.ALPHA, init_lora_weights="gaussian",
                                target_modules=list(gpu_memory.TARGETS)))
    gen = torch.Generator().manual_seed(1)
    for name, p in unet.named_parameters():
        if ".lora_" in name:  # B != 0 as after some training: the pass has a loss to compare
            p.data = p.data.float() if "lora_A" in name else torch.randn(p.shape, generator=gen) * 0.01
    unet.enable_gradient_checkpointing()  # as `auto` chooses for SDXL on a 12 GB card
    unet.train()
    half = _half_frozen(unet)
    weights = sum(p.numel() * p.element_size() for p in half)
    side = size // 8
    x = torch.randn(1, config["in_channels"], side, side)
    t = torch.tensor([999])
    cond = torch.randn(1, 77, config["cross_attention_dim"])
    extra = None
    if config.get("addition_embed_type") == "text_time":
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        extra = {"text_embeds": torch.randn(1, pooled), "time_ids": torch.randn(1, 6)}
    process = psutil.Process()
    before = process.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.005)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    started = time.perf_counter()
    upcaster = upcast_whole_model if strategy == "whole model" else _upcast_per_layer
    with upcaster(half), _full_precision_kernels():
        pred = unet(x, t, cond, added_cond_kwargs=extra).sample
        with torch.no_grad(), adapters_disabled(unet):
            ref = unet(x, t, cond, added_cond_kwargs=extra).sample
        loss = torch.nn.functional.mse_loss(pred, ref)
        loss.backward()
    seconds = time.perf_counter() - started
    done.set()
    watcher.join()
    peak[0] = max(peak[0], process.memory_info().rss)
    return {"strategy": strategy, "half_weights_gib": weights / GiB, "rise_gib": (peak[0] - before) / GiB,
            "seconds": seconds, "loss": float(loss)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="the tiny SDXL-shaped UNet of the GPU benchmark's --tiny")
    p.add_argument("--size", type=int, default=None, help="image side in px (default 256; 32 with --tiny)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    size = args.size or (32 if args.tiny else 256)
    if args.child:
        print(json.dumps(one_pass(args.child, args.tiny, size)))
        return 0
    rows = []
    for strategy in ("whole model", "per layer"):
        cmd = [sys.executable, __file__, "--child", strategy, "--size", str(size)] + (["--tiny"] if args.tiny else [])
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            print(run.stderr[-2000:], file=sys.stderr)
            return 1
        rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
    name = "tiny SDXL-shaped UNet" if args.tiny else "SDXL base UNet (2.6B parameters)"
    print(f"### One preservation pass, {name}, bf16 frozen weights, 1 row at {size} px, checkpointing on — "
          f"CPU, {time.strftime('%Y-%m-%d')}")
    print()
    print("| strategy | half-precision frozen weights GiB | peak rise over the pass GiB | seconds | loss |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['strategy']} | {r['half_weights_gib']:.2f} | {r['rise_gib']:.2f} | {r['seconds']:.1f} | "
              f"{r['loss']:.6g} |")
    same = rows[0]["loss"] == rows[1]["loss"]
    print()
    print(f"same loss from both strategies: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
