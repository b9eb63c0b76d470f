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
import sys

GiB = 2**30
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
    import torch

    import gpu_memory
    from cpu_peak import bf16_unet_with_lora, resident_peak
    from duo_unlearn.trainer.families import Conditioning, get_family
    from duo_unlearn.trainer.families.base import DDPMProcess
    from duo_unlearn.trainer.latent_cache import LatentCache
    from duo_unlearn.trainer.steps import StepContext
    from duo_unlearn.trainer.steps.duo import duo_draw

    unet, config = bf16_unet_with_lora("sd1", tiny)
    gen = torch.Generator().manual_seed(1)
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
    with resident_peak() as measured:
        loss = (pairs_first if order == ORDERS[0] else preservation_first)(ctx, draw)
    grads = [p.grad.double() for n, p in unet.named_parameters() if ".lora_" in n and p.grad is not None]
    return {"order": order, "rise_gib": measured["rise"] / GiB, "seconds": measured["seconds"], "loss": loss,
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
    from cpu_peak import each_in_its_own_process, print_table

    rows = each_in_its_own_process(__file__, ORDERS, ["--size", str(size), "--pairs", str(args.pairs)]
                                   + (["--tiny"] if args.tiny else []))
    if rows is None:
        return 1
    name = "tiny SD 1.5-shaped UNet" if args.tiny else "SD 1.5 UNet (860M parameters)"
    print_table(f"### One DUO step, {name}, bf16 frozen weights, {args.pairs} pairs at {size} px, checkpointing on",
                ["order", "peak rise over the step GiB", "seconds", "loss", "LoRA gradient checksum"],
                [[r["order"], f"{r['rise_gib']:.2f}", f"{r['seconds']:.1f}", f"{r['loss']:.6g}",
                  f"{r['grad_checksum']:.10g}"] for r in rows])
    same = rows[0]["grad_checksum"] == rows[1]["grad_checksum"] and rows[0]["grads"] == rows[1]["grads"] > 0
    print(f"same gradients from both orders: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
