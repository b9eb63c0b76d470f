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
import sys
from contextlib import contextmanager

GiB = 2**30


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
    import torch

    from cpu_peak import bf16_unet_with_lora, resident_peak
    from duo_unlearn.trainer.lora import adapters_disabled
    from duo_unlearn.trainer.steps.context import _full_precision_kernels, _half_frozen, _upcast_per_layer

    unet, config = bf16_unet_with_lora("sdxl", tiny)
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
    upcaster = upcast_whole_model if strategy == "whole model" else _upcast_per_layer
    with resident_peak() as measured, upcaster(half), _full_precision_kernels():
        pred = unet(x, t, cond, added_cond_kwargs=extra).sample
        with torch.no_grad(), adapters_disabled(unet):
            ref = unet(x, t, cond, added_cond_kwargs=extra).sample
        loss = torch.nn.functional.mse_loss(pred, ref)
        loss.backward()
    return {"strategy": strategy, "half_weights_gib": weights / GiB, "rise_gib": measured["rise"] / GiB,
            "seconds": measured["seconds"], "loss": float(loss)}


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
    from cpu_peak import each_in_its_own_process, print_table

    rows = each_in_its_own_process(__file__, ("whole model", "per layer"),
                                   ["--size", str(size)] + (["--tiny"] if args.tiny else []))
    if rows is None:
        return 1
    name = "tiny SDXL-shaped UNet" if args.tiny else "SDXL base UNet (2.6B parameters)"
    print_table(f"### One preservation pass, {name}, bf16 frozen weights, 1 row at {size} px, checkpointing on",
                ["strategy", "half-precision frozen weights GiB", "peak rise over the pass GiB", "seconds", "loss"],
                [[r["strategy"], f"{r['half_weights_gib']:.2f}", f"{r['rise_gib']:.2f}", f"{r['seconds']:.1f}",
                  f"{r['loss']:.6g}"] for r in rows])
    same = rows[0]["loss"] == rows[1]["loss"]
    print(f"same loss from both strategies: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
