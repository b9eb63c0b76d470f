"""What the CPU memory benchmarks share (preservation_memory.py, step_order_memory.py): a UNet as the trainer holds
one under bf16, and the peak rise of the process's resident memory over a block."""
from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent


def bf16_unet_with_lora(family: str, tiny: bool):
    """The family's UNet (the GPU benchmark's full-size or tiny config) in bf16 with its rank-32 self-attention LoRA
    in float32, lora_B nonzero as after some training (so a pass has a loss to compare), gradient checkpointing on
    (what `auto` picks on a small card), in training mode. Returns (unet, its config)."""
    import torch
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    sys.path.insert(0, str(HERE))
    import gpu_memory

    config = (gpu_memory.TINY_FAMILIES if tiny else gpu_memory.FAMILIES)[family]["unet"]
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
    return unet, config


@contextmanager
def resident_peak(every: float = 0.005):
    """Samples the resident memory every `every` seconds while the block runs; yields a dict whose "rise" (bytes
    over the resident memory at entry) and "seconds" are set when the block ends."""
    import psutil

    process = psutil.Process()
    before = process.memory_info().rss
    peak, done, out = [before], threading.Event(), {}

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(every)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    started = time.perf_counter()
    try:
        yield out
    finally:
        out["seconds"] = time.perf_counter() - started
        done.set()
        watcher.join()
        out["rise"] = max(peak[0], process.memory_info().rss) - before


def each_in_its_own_process(script: str, choices, args: list[str]) -> list[dict] | None:
    """Runs `script --child CHOICE *args` once per choice, each in a fresh process (so no run inherits another's
    allocations), and returns the JSON line each prints last; None, with the error printed, if one fails."""
    import json
    import subprocess

    rows = []
    for choice in choices:
        run = subprocess.run([sys.executable, script, "--child", choice, *args], capture_output=True, text=True)
        if run.returncode != 0:
            print(run.stderr[-2000:], file=sys.stderr)
            return None
        rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
    return rows


def print_table(title: str, header: list[str], cells: list[list[str]]) -> None:
    """A titled markdown table, dated, as the benchmarks print it for RESULTS.md."""
    print(f"{title} — CPU, {time.strftime('%Y-%m-%d')}")
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in cells:
        print("| " + " | ".join(row) + " |")
    print()
