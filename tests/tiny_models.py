"""Tiny Stable Diffusion pipelines and pair datasets built inside the tests (random weights, no downloads)."""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _pretrain(pipe, steps: int, seed: int) -> None:
    """A few hundred denoising steps on red/blue squares, so the tiny UNet is a denoiser and not noise."""
    from diffusers import DDPMScheduler

    g = torch.Generator().manual_seed(seed)
    images = torch.stack([torch.from_numpy(np.asarray(_square(int(x), int(y), c))).permute(2, 0, 1)
                          for x in range(0, 8, 2) for y in range(0, 8, 2) for c in (_RED, _BLUE)]).float() / 127.5 - 1
    with torch.no_grad():
        latents = pipe.vae.encode(images).latent_dist.mean * pipe.vae.config.scaling_factor
        cond = pipe.encode_prompt([""], "cpu", 1, False)[0]
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    params = list(pipe.unet.parameters())
    opt = torch.optim.AdamW(params, lr=2e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(latents), (16,), generator=g)
        noise = torch.randn(latents[idx].shape, generator=g)
        t = torch.randint(0, 1000, (16,), generator=g)
        pred = pipe.unet(sched.add_noise(latents[idx], noise, t), t, cond.expand(16, -1, -1)).sample
        target = noise if sched.config.prediction_type == "epsilon" else sched.get_velocity(latents[idx], noise, t)
        loss = torch.nn.functional.mse_loss(pred, target)
        opt.zero_grad()
        loss.backward()
        opt.step()


_RED, _BLUE = (220, 30, 30), (40, 80, 220)


def _square(x: int, y: int, colour, size: int = 16) -> Image.Image:
    a = np.full((size, size, 3), 255, np.uint8)
    a[y:y + size // 2, x:x + size // 2] = colour
    return Image.fromarray(a)


def build_tiny_pipeline(folder: Path, prediction_type: str = "epsilon", seed: int = 0,
                        pretrain_steps: int = 300) -> Path:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from duo_unlearn.trainer.testbed.shapes import vocabulary_words
    from duo_unlearn.trainer.testbed.vocabulary import build_tokenizer

    torch.manual_seed(seed)
    folder = Path(folder)
    tokenizer = build_tokenizer(folder / "_tok", vocabulary_words())
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=16,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=1, num_attention_heads=2,
                                                max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                                                pad_token_id=1))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                layers_per_block=1, norm_num_groups=8, cross_attention_dim=32, attention_head_dim=2,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                              prediction_type=prediction_type)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    if pretrain_steps:
        _pretrain(pipe, pretrain_steps, seed)
    pipe.save_pretrained(str(folder / "model"), safe_serialization=True)
    return folder / "model"


def write_pair_dataset(folder: Path, n: int = 6, size: int = 16, seed: int = 0) -> Path:
    """Red squares (unsafe) and blue squares at the same place (safe), in the pair dataset format."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    (folder / "unsafe").mkdir(parents=True, exist_ok=True)
    (folder / "safe").mkdir(exist_ok=True)
    lines = []
    for i in range(n):
        x, y = rng.integers(0, size // 2, size=2)
        for sub, colour in (("unsafe", _RED), ("safe", _BLUE)):
            _square(int(x), int(y), colour, size).save(folder / sub / f"{i:04d}.png")
        lines.append(json.dumps({"id": f"{i:04d}", "unsafe": f"unsafe/{i:04d}.png", "safe": f"safe/{i:04d}.png",
                                 "unsafe_prompt": "a red square", "safe_prompt": "a blue square", "seed": i}))
    (folder / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return folder


class ScriptedDetector:
    """Finds the concept in `found[k]` of the images at the k-th check (then none); records what it was shown."""

    name = "scripted"
    threshold = 0.5

    def __init__(self, found: list[int]):
        self.found, self.shown = list(found), []

    def scores(self, images):
        self.shown.append(len(images))
        hits = self.found[len(self.shown) - 1] if len(self.shown) <= len(self.found) else 0
        return [1.0] * hits + [0.0] * (len(images) - hits)


class NeverDetector:
    """A detector that never finds the concept (as nudenet on the shapes test bed); counts the images it saw."""
    name, threshold = "never", 0.5

    def __init__(self):
        self.calls = 0

    def scores(self, images):
        self.calls += len(images)
        return [0.0] * len(images)


class ModelLoaded(Exception):
    """Raised in place of loading a model (the `no_model` fixture): the refusal under test came too late, or the
    checks before it passed."""


def interrupted_run(root: Path, model: Path, pairs: Path, every: int) -> Path:
    """The checkpoint folder (root/ck) of a 4-step run at rank 2 that checkpointed every `every` steps, kept as an
    interrupted run keeps them; the finished adapter is removed."""
    from duo_unlearn.trainer.checkpoints import CheckpointFolder
    from duo_unlearn.trainer.cli import main

    keep = CheckpointFolder.remove_spent
    CheckpointFolder.remove_spent = lambda self: None
    try:
        code = main(["train", "--pairs", str(pairs), "--model", str(model), "--out", str(root / "a.safetensors"),
                     "--steps", "4", "--rank", "2", "--batch-pairs", "2", "--checkpoint-every", str(every),
                     "--checkpoint-dir", str(root / "ck")])
    finally:
        CheckpointFolder.remove_spent = keep
    assert code == 0
    (root / "a.safetensors").unlink()
    return root / "ck"


@contextmanager
def logged_warnings(logger_name: str = "diffusers"):
    """The warnings a library logs inside the block, as text: what its own handler would have printed."""
    said: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: said.append(record.getMessage())
    logging.getLogger(logger_name).addHandler(handler)
    try:
        yield said
    finally:
        logging.getLogger(logger_name).removeHandler(handler)
