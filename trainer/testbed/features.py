"""The test bed's feature network, for a test-bed FID: a small CNN that reads colour, shape and background.

Inception features describe photographs; on 32×32 flat shapes they say little, and their weights are a download.
So the test bed has its own network, trained by the project on renders of `shapes.py` (with blur and noise, so the
generator's softer images read the same); its penultimate layer (FEATURES numbers) is what FID compares. Figures
it gives are labelled LABEL and are not comparable with published FID.

Retrain (seeded, a few minutes on one CPU core; writes features.safetensors and features.json beside this file):
    python -m duo_unlearn.trainer.testbed.features [--steps N] [--seed S] [--generated N]
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .shapes import BACKGROUNDS, COLOURS, IMAGE_SIZE, SHAPES, SYNONYMS, make_dataset, random_spec, render

_HERE = Path(__file__).resolve().parent
WEIGHTS = _HERE / "features.safetensors"
FIGURES = _HERE / "features.json"
FEATURES = 32  # few numbers: a test-bed eval has tens of images, and FID estimates a FEATURES² covariance
HEADS = {"colour": tuple(COLOURS), "shape": SHAPES, "background": tuple(BACKGROUNDS)}
LABEL = "test-bed FID (project feature network), not comparable with published FID"
FORMAT = "duo-unlearn testbed features 1"
RENDERS_PER_PROMPT = 64  # the test-bed FID's reference: cheap to draw, and more reference images, less bias


@dataclass
class FeatureTrainConfig:
    out: str = str(WEIGHTS)
    seed: int = 0
    images: int = 12_000
    held_out: int = 3_000
    steps: int = 1_500
    batch: int = 64
    lr: float = 3e-3
    generated: int = 64  # also check on this many of the bundled test bed's own images (0: skip)
    fid_check: bool = True  # measure the FID calibration figures (base vs renders, renders vs renders)


def build_net():
    """trunk: 32×32 RGB in [-1, 1] -> FEATURES (the FID features); one linear head per attribute on them."""
    from torch import nn

    trunk = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),  # 16×16
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),  # 8×8
        nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),  # 4×4: a receptive field the size of a shape
        # Flattened, not pooled: shape accuracy was 0.52 after global average pooling, and where the shape sits is
        # part of what FID should compare. No activation after: a ReLU left a third of the features dead.
        nn.Flatten(), nn.Linear(64 * 16, FEATURES),
    )
    heads = nn.ModuleDict({name: nn.Linear(FEATURES, len(classes)) for name, classes in HEADS.items()})
    return nn.ModuleDict({"trunk": trunk, "heads": heads})


def to_input(images):
    """PIL images, a uint8 N×H×W×3 array, or a uint8 N×3×H×W tensor -> float N×3×32×32 in [-1, 1]. Other sizes
    are resized (antialiased bilinear): the network only knows the test bed's 32×32."""
    import torch

    if isinstance(images, torch.Tensor):
        x = images
    else:
        if not isinstance(images, np.ndarray):
            images = np.stack([np.asarray(im.convert("RGB")) for im in images])
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if tuple(x.shape[-2:]) != (IMAGE_SIZE, IMAGE_SIZE):
        x = torch.nn.functional.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                                            align_corners=False, antialias=True)
    return x * 2.0 - 1.0


def load_net(path: str | Path = WEIGHTS):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"the test bed's feature network {path} is missing; retrain it with "
                        "python -m duo_unlearn.trainer.testbed.features")
    net = build_net()
    try:
        net.load_state_dict(load_file(str(path)))
    except (SafetensorError, RuntimeError, OSError) as e:
        raise UserError(f"{path} is not the test bed's feature network ({type(e).__name__}); retrain it with "
                        "python -m duo_unlearn.trainer.testbed.features") from None
    return net.eval().requires_grad_(False)


def feature_extractor(net=None):
    """A module for torchmetrics' FrechetInceptionDistance: uint8 N×3×H×W -> N×FEATURES."""
    import torch

    class TestbedFeatures(torch.nn.Module):
        num_features = FEATURES  # torchmetrics reads this instead of probing with a 299×299 image

        def __init__(self, trunk):
            super().__init__()
            self.trunk = trunk

        def forward(self, images):
            return self.trunk(to_input(images).to(next(self.trunk.parameters()).device))

    return TestbedFeatures((net if net is not None else load_net())["trunk"]).eval()


def classify(net, images) -> dict[str, list[str]]:
    """{head: [class name per image]}."""
    import torch

    with torch.no_grad():
        f = net["trunk"](to_input(images))
        return {name: [HEADS[name][i] for i in head(f).argmax(1).tolist()] for name, head in net["heads"].items()}


def parse_prompt(prompt: str) -> dict[str, str] | None:
    """{"colour", "shape", "background"} a test-bed caption names ("crimson" reads as red); what it leaves out
    is absent. None when a word is not the test bed's (then no render can stand for the prompt)."""
    from .shapes import vocabulary_words

    colour_of = {c: c for c in COLOURS} | {s: c for c, syns in SYNONYMS.items() for s in syns}
    words = prompt.lower().replace(",", " ").split()
    if any(w not in vocabulary_words() for w in words):
        return None
    out: dict[str, str] = {}
    for i, w in enumerate(words):
        if w in BACKGROUNDS and i + 1 < len(words) and words[i + 1] == "background":
            out["background"] = w
        elif w in colour_of:
            out["colour"] = colour_of[w]
        elif w in SHAPES:
            out["shape"] = w
    return out


def reference_renders(prompts: list[str], per_prompt: int, seed: int = 0) -> list:
    """per_prompt renders of each prompt (PIL), what the test bed was trained to draw for it: the named colour,
    shape and background, the rest drawn at random, random place and size, ±8 RGB jitter as in its data."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for prompt in prompts:
        named = parse_prompt(prompt)
        if named is None:
            raise UserError(f"{prompt!r} is not a test-bed prompt (e.g. 'a blue circle on a white background')")
        for _ in range(per_prompt):
            out.append(Image.fromarray(render(random_spec(rng, **named), jitter=rng.normal(0, 8, size=3))))
    return out


def _labels(specs):
    import torch

    return {name: torch.tensor([classes.index(getattr(s, name)) for s in specs]) for name, classes in HEADS.items()}


def _augment(x, gen):
    """Blend towards a 3×3 blur and add noise, by a random amount per image: the generator's images are a VAE's
    decodings, softer and noisier than renders, and must read the same."""
    import torch

    n = x.shape[0]
    blur = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    a = torch.rand(n, 1, 1, 1, generator=gen)
    x = (1 - a) * x + a * blur
    return x + torch.randn(x.shape, generator=gen) * torch.rand(n, 1, 1, 1, generator=gen) * 0.1


def accuracy(net, images, specs) -> dict[str, float]:
    got = classify(net, images)
    return {name: float(np.mean([g == getattr(s, name) for g, s in zip(got[name], specs)])) for name in HEADS}


def _generated_check(net, n: int, seed: int) -> dict:
    """The bundled test bed's own images of full prompts, read by this network, compared with the pixel-rule
    classifier's reading and with the prompt. Neither is ground truth: the generator misses some prompts, and its
    tinted backgrounds and soft edges are where the two readers differ."""
    from ..detectors.colour import read_image
    from ..models import load_model
    from .measure import generate
    from .shapes import full_prompt

    rng = np.random.default_rng(seed)
    named = [{"colour": str(rng.choice(list(COLOURS))), "shape": str(rng.choice(SHAPES)),
              "background": str(rng.choice(list(BACKGROUNDS)))} for _ in range(n)]
    pipe = load_model("testbed").pipe
    pipe.set_progress_bar_config(disable=True)
    images = []
    for i in range(0, n, 16):
        images += generate(pipe, [full_prompt(**d) for d in named[i:i + 16]], seed + i)
    got = classify(net, images)
    readings = [read_image(im) for im in images]
    out: dict = {"n": n, "steps": 25, "guidance": 5.0}
    for name in HEADS:
        pixel = [getattr(r, name) for r in readings]
        prompt = [d[name] for d in named]
        out[name] = {"agrees_with_pixel_classifier": float(np.mean([g == r for g, r in zip(got[name], pixel)])),
                     "agrees_with_prompt": float(np.mean([g == d for g, d in zip(got[name], prompt)])),
                     "pixel_classifier_agrees_with_prompt": float(np.mean([r == d for r, d in zip(pixel, prompt)]))}
    return out


def fid_calibration(per_prompt: int = 16, seed: int = 0, weights: str | Path = WEIGHTS) -> dict:
    """What test-bed FIDs look like, through the evaluation's own code: the preset testbed-red's unrelated prompts,
    per_prompt images each, against the default reference (RENDERS_PER_PROMPT renders of each prompt)."""
    from ..evaluate.quality import Quality
    from ..models import load_model
    from ..presets import get_preset
    from .measure import generate

    prompts = list(get_preset("testbed-red").unrelated_prompts)
    flat = [q for q in prompts for _ in range(per_prompt)]
    out: dict = {"prompts": prompts, "per_prompt": per_prompt, "reference_per_prompt": RENDERS_PER_PROMPT}
    started = time.time()
    pipe = load_model("testbed").pipe
    pipe.set_progress_bar_config(disable=True)
    base = []
    for i in range(0, len(flat), 16):
        base += generate(pipe, flat[i:i + 16], seed + i)
    out["seconds_generate"] = round(time.time() - started, 1)
    started = time.time()
    q = Quality(fid_features="testbed", testbed_weights=str(weights))
    q.set_reference(base, flat, seed)
    out["base_vs_renders"] = q.measure(base, flat)["fid"]["value"]
    out["other_renders_vs_renders"] = q.measure(reference_renders(prompts, per_prompt, seed + 1), flat)["fid"]["value"]
    itself = Quality(fid_features="testbed", testbed_weights=str(weights))  # same images as reference: FID 0
    itself.add(base, real=True)
    itself.reference = {"kind": "base model"}
    out["base_vs_itself"] = itself.measure(base, flat)["fid"]["value"]
    out["seconds_fid"] = round(time.time() - started, 1)
    return out


def train_features(cfg: FeatureTrainConfig, log=print) -> dict:
    """Train, check on held-out renders (and generated images), write the weights and figures; returns them."""
    import torch
    from safetensors.torch import save_file

    from ..atomic import write_atomic, write_text_atomic

    started = time.time()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    images, _, specs = make_dataset(cfg.images, seed=cfg.seed + 1_000)  # not the generator's data (seed 0)
    x_all, y_all = to_input(images), _labels(specs)
    net = build_net()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    net.train()
    for step in range(cfg.steps):
        idx = torch.randint(0, len(x_all), (cfg.batch,), generator=gen)
        f = net["trunk"](_augment(x_all[idx], gen))
        loss = sum(torch.nn.functional.cross_entropy(head(f), y_all[name][idx]) for name, head in net["heads"].items())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == cfg.steps - 1:
            log(f"step {step} loss {loss.item():.4f} ({time.time() - started:.0f}s)")
    net.eval().requires_grad_(False)
    train_seconds = time.time() - started
    held_images, _, held_specs = make_dataset(cfg.held_out, seed=cfg.seed + 2_000)
    figures = {"held_out_renders": {"n": cfg.held_out, **accuracy(net, held_images, held_specs)}}
    with torch.no_grad():
        feats = net["trunk"](to_input(held_images))
    figures["feature_std_min"] = round(float(feats.std(0).min()), 4)  # no feature left constant
    if cfg.generated:
        figures["generated"] = _generated_check(net, cfg.generated, cfg.seed + 3_000)
    write_atomic(Path(cfg.out), lambda tmp: save_file({k: v.contiguous() for k, v in net.state_dict().items()},
                                                      str(tmp), metadata={"format": FORMAT, "features": str(FEATURES)}))
    if cfg.fid_check:  # through load_net, so it measures the file just written
        figures["fid_calibration"] = fid_calibration(seed=cfg.seed, weights=cfg.out)
    log(json.dumps(figures))
    out = Path(cfg.out)
    record = {"format": FORMAT, "config": asdict(cfg) | {"out": out.name}, "figures": figures,
              "parameters": sum(p.numel() for p in net.parameters()), "weights_bytes": out.stat().st_size,
              "seconds_train": round(train_seconds, 1), "seconds_total": round(time.time() - started, 1),
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "command": "python -m duo_unlearn.trainer.testbed.features"}
    write_text_atomic(out.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    log(f"saved {out} ({record['seconds_total']:.0f}s)")
    return record


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m duo_unlearn.trainer.testbed.features",
                                description=__doc__.splitlines()[0])
    defaults = FeatureTrainConfig()
    for name in defaults.__dataclass_fields__:
        value = getattr(defaults, name)
        if isinstance(value, bool):
            p.add_argument("--" + name.replace("_", "-"), action=argparse.BooleanOptionalAction, default=value)
        else:
            p.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    train_features(FeatureTrainConfig(**vars(p.parse_args(argv))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
