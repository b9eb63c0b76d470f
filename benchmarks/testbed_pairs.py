"""The testbed-red pair set, measured: gating outcome, and how well each safe twin keeps the unsafe image's shape.

    python benchmarks/testbed_pairs.py [--num-pairs 32] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> int:
    from duo_unlearn.trainer.detectors.colour import read_image
    from duo_unlearn.trainer.pair_dataset import read_pairs
    from duo_unlearn.trainer.pairs import PairConfig, generate_pairs
    from duo_unlearn.trainer.presets import get_preset
    from duo_unlearn.trainer.testbed.figures import mask_iou

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-pairs", type=int, default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    preset = get_preset("testbed-red")
    concept = preset.concepts[0]
    out = Path(args.out or tempfile.mkdtemp()) / "pairs"
    cfg = PairConfig(out=str(out), model="testbed", unsafe_prompts=concept.unsafe_prompts,
                     safe_prompts=concept.safe_prompts, num_pairs=args.num_pairs or preset.num_pairs,
                     strength=preset.strength, guidance=preset.guidance, sample_steps=preset.sample_steps,
                     detector=preset.detector)
    started = time.perf_counter()
    stats = generate_pairs(cfg)
    seconds = time.perf_counter() - started
    unsafe_red, safe_not_red, ious, shape_kept = [], [], [], []
    for r in read_pairs(out):
        u, s = (read_image(Image.open(out / path)) for path in (r.unsafe, r.safe))
        unsafe_red.append(u.colour == "red")
        safe_not_red.append(s.colour != "red")
        ious.append(mask_iou(u.mask, s.mask))
        shape_kept.append(u.shape == s.shape)
    print(json.dumps({
        "pairs_kept": stats.made + stats.kept_existing, "skipped": stats.skipped,
        "unsafe_rejected": stats.unsafe_rejected, "twins_rejected": stats.safe_rejected,
        "every_unsafe_red": all(unsafe_red), "every_twin_not_red": all(safe_not_red),
        "mask_iou_mean": round(float(np.mean(ious)), 3), "mask_iou_median": round(float(np.median(ious)), 3),
        "mask_iou_min": round(float(np.min(ious)), 3), "same_shape_read": round(float(np.mean(shape_kept)), 3),
        "seconds": round(seconds, 1), "folder": str(out), "contact_sheet": str(stats.contact_sheet),
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
