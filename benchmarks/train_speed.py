"""Wall time per DUO training step and peak memory.

    python benchmarks/train_speed.py [--model tiny|testbed|PATH] [--steps N] [--mixed-precision bf16] [--gradient-checkpointing]

`tiny` builds the test suite's tiny random SD pipeline; the pair dataset is the test suite's red/blue squares
(resized by the trainer to the model's resolution). Peak memory: process RSS on CPU, torch's peak allocation on CUDA.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> int:
    import torch

    from duo_unlearn.trainer.config import TrainConfig
    from duo_unlearn.trainer.train import train
    from tiny_models import build_tiny_pipeline, write_pair_dataset

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--mixed-precision", default="no")
    p.add_argument("--gradient-checkpointing", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = str(build_tiny_pipeline(tmp / "m", pretrain_steps=0)) if args.model == "tiny" else args.model
        pairs = write_pair_dataset(tmp / "pairs", n=8, size=32)
        times: list[float] = []
        last = [time.perf_counter()]

        def clock(event):
            if event.stage == "train":
                now = time.perf_counter()
                times.append(now - last[0])
                last[0] = now
            elif event.stage == "cache":
                last[0] = time.perf_counter()
        started = time.perf_counter()
        train(TrainConfig(pairs=str(pairs), model=model, out=str(tmp / "a.safetensors"), steps=args.steps,
                          mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing),
              progress=clock)
        total = time.perf_counter() - started
    steady = times[5:] or times
    result = {
        "model": args.model, "steps": args.steps, "device": "cuda" if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(), "seconds_total": round(total, 2),
        "seconds_per_step_median": round(sorted(steady)[len(steady) // 2], 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if torch.cuda.is_available():
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
