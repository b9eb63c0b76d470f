"""Peak memory of one DUO step under bf16 frozen weights: the float32 preservation pass run after the pairs' pass
(the trainer until 2026-12-04: the pairs' graph still held while that pass backpropagates) against before it (the
trainer now, trainer.steps.duo.duo_loss_on: one graph at a time).

    python benchmarks/step_order_memory.py            # SD 1.5's UNet at full size, 512 px, 4 pairs, on the CPU
    python benchmarks/step_order_memory.py --tiny     # the GPU benchmark's tiny SD 1.5 shapes, seconds (tests run it)

Each order runs in its own process: build the UNet in bf16 with a rank-32 self-attention LoRA (random weights,
lora_B nonzero as after some training), gradient checkpointing on (what `auto` picks on a 6 GB card), then one
step through the trainer's own duo_draw / duo_loss_on / StepContext with the official recipe's β and λ, while a
thread samples the process's resident memory every 5 ms. It prints the peak rise over the resident memory before
the step, and a checksum of the LoRA gradients: both orders must give the same gradients, bit for bit.
The CPU's allocator returns large blocks to the system when freed, as a GPU's caching allocator reuses them, so the
rise reads as the activations and float32 layer copies a GPU would hold at the step's peak.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

GiB = 2**30
HERE = Path(__file__).resolve().parent
ORDERS = ("pairs first (former)", "preservation first (trainer)")


def pairs_first(ctx, draw):
    """The former order: the pairs' pass builds its graph, then the preservation pass runs and backpropagates with
    that graph still held, then the pairs' loss backpropagates."""
    import torch

    from duo_unlearn.trainer.steps.duo import duo_loss_on

    deferred, real = [], ctx.preservation
    ctx.preservation = lambda *args: deferred.append(args) or torch.zeros(())
    out = duo_loss_on(ctx, draw)
    prior = real(*deferred[0])
    ctx.backward(out.loss)
    return float(out.loss + ctx.lam * prior)


def preservation_first(ctx, draw):
    from duo_unlearn.trainer.steps.duo import duo_loss_on

    out = duo_loss_on(ctx, draw)
    ctx.backward(out.loss)
    return float(out.loss)


def one_step(order: str, tiny: bool, size: int, pairs: int) -> dict:
    import psutil
    import torch
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    sys.path.insert(0, str(HERE))
    import gpu_memory

    from duo_unlearn.trainer.families import Conditioning, get_family
    from duo_unlearn.trainer.families.base import DDPMProcess
    from duo_unlearn.trainer.latent_cache import LatentCache
    from duo_unlearn.trainer.steps import StepContext
    from duo_unlearn.trainer.steps.duo import duo_draw

    config = (gpu_memory.TINY_FAMILIES if tiny else gpu_memory.FAMILIES)["sd1"]["unet"]
    torch.manual_seed(0)
    with gpu_memory.default_dtype(torch.bfloat16):
        unet = UNet2DConditionModel(**config)
    unet.add_adapter(LoraConfig(r=gpu_memory.RANK, lora_alpha=gpu_memory.ALPHA, init_lora_weights="gaussian",
                                target_modules=list(gpu_memory.TARGETS)))
    gen = torch.Generator().manual_seed(1)
    for name, p in unet.named_parameters():
        if ".lora_" in name:
            p.data = p.data.float() if "lora_A" in name else torch.randn(p.shape, generator=gen) * 0.01
            p.requires_grad_(True)
    unet.enable_gradient_checkpointing()
    unet.train()
    side = size // 8
    latents = torch.randn(2 * pairs, config["in_channels"], side, side, generator=gen)
    empty = Conditioning({"encoder_hidden_states": torch.randn(1, 77, config["cross_attention_dim"], generator=gen)})
    cache = LatentCache(unsafe_mean=latents[:pairs], unsafe_std=torch.zeros_like(latents[:pairs]),
                        safe_mean=latents[pairs:], safe_std=torch.zeros_like(latents[pairs:]), scaling=1.0, shift=0.0,
                        empty=empty)
    beta = 500.0  # the official nudity recipe: λ = 1e6·β/100
    ctx = StepContext(family=get_family("sd1"), process=DDPMProcess(gpu_memory.SD1_SCHEDULER), denoiser=unet,
                      raw=unet, cache=cache, t_range=(0, 750), beta=beta, lam=1e6 * beta / 100,
                      autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16), backward=lambda t: t.backward(),
                      half=True)
    draw = duo_draw(ctx, torch.arange(pairs), torch.Generator().manual_seed(2))

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
    loss = (pairs_first if order == ORDERS[0] else preservation_first)(ctx, draw)
    seconds = time.perf_counter() - started
    done.set()
    watcher.join()
    peak[0] = max(peak[0], process.memory_info().rss)
    grads = [p.grad.double() for n, p in unet.named_parameters() if ".lora_" in n and p.grad is not None]
    return {"order": order, "rise_gib": (peak[0] - before) / GiB, "seconds": seconds, "loss": loss,
            "grad_checksum": float(sum(g.abs().sum() for g in grads)), "grads": len(grads)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="the tiny SD 1.5-shaped UNet of the GPU benchmark's --tiny")
    p.add_argument("--size", type=int, default=None, help="image side in px (default 512; 32 with --tiny)")
    p.add_argument("--pairs", type=int, default=4, help="pairs in the step (default 4, the trainer's default pass)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    size = args.size or (32 if args.tiny else 512)
    if args.child:
        print(json.dumps(one_step(args.child, args.tiny, size, args.pairs)))
        return 0
    rows = []
    for order in ORDERS:
        cmd = [sys.executable, __file__, "--child", order, "--size", str(size), "--pairs", str(args.pairs)]
        run = subprocess.run(cmd + (["--tiny"] if args.tiny else []), capture_output=True, text=True)
        if run.returncode != 0:
            print(run.stderr[-2000:], file=sys.stderr)
            return 1
        rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
    name = "tiny SD 1.5-shaped UNet" if args.tiny else "SD 1.5 UNet (860M parameters)"
    print(f"### One DUO step, {name}, bf16 frozen weights, {args.pairs} pairs at {size} px, checkpointing on — "
          f"CPU, {time.strftime('%Y-%m-%d')}")
    print()
    print("| order | peak rise over the step GiB | seconds | loss | LoRA gradient checksum |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['order']} | {r['rise_gib']:.2f} | {r['seconds']:.1f} | {r['loss']:.6g} | "
              f"{r['grad_checksum']:.10g} |")
    same = rows[0]["grad_checksum"] == rows[1]["grad_checksum"] and rows[0]["grads"] == rows[1]["grads"] > 0
    print()
    print(f"same gradients from both orders: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
