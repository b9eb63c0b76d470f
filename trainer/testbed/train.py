"""Train the bundled test-bed model from scratch: `duo-unlearn testbed-train [--family sd1|sdxl|sd3] [--out DIR]`.

An --out that already holds files (the bundled model, by default) is replaced only with --overwrite, and only once
the new model is complete.

`--family sdxl|sd3` trains the SDXL / SD3 test beds instead (`train_families.py`, from this one's parts).

Three stages, all seeded: a VAE (32x32 RGB -> 16x16x4), then the UNet and the CLIP text encoder together on the
VAE's posterior means (sampled latents carry as much posterior noise as signal, which blurred prompt following).
The result is a standard StableDiffusionPipeline folder.
"""
from __future__ import annotations

import copy
import json
import math
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from . import TESTBED_DIR
from .architecture import build_inference_scheduler, build_text_encoder, build_unet, build_vae, scheduler_kwargs
from .shapes import make_dataset, vocabulary_words
from .vocabulary import MAX_LENGTH, build_tokenizer
from ..atomic import current_umask, disk_error, follow_umask, raise_as_disk_error, remove_tree
from ..cli_options import OneLineParser
from ..errors import UserError


@dataclass
class TestbedTrainConfig:
    out: str = str(TESTBED_DIR)
    seed: int = 0
    images: int = 30_000
    vae_steps: int = 1_200
    vae_batch: int = 32
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    unet_steps: int = 4_000
    unet_batch: int = 64
    unet_lr: float = 1e-3
    warmup: int = 100
    ema_decay: float = 0.999
    eval_every: int = 1_000  # 0: no evaluation during training
    log_every: int = 100
    overwrite: bool = False  # replace an --out that already holds files


MAX_IMAGES = 300_000  # ten times the default: about 4.5 GB of pixels


def check_ranges(cfg, positive=(), zero_or_more=(), fraction=()) -> None:
    """One line for the first setting out of its range, raised before any training so that a typo costs nothing.
    positive: > 0; zero_or_more: >= 0; fraction: in [0, 1). Floats must be finite as well."""
    if not 0 <= cfg.seed <= 2**64 - 3:  # torch seeds are 64-bit and the stages draw from seed + 1 and seed + 2
        raise UserError(f"--seed must be from 0 to {2**64 - 3}, got {cfg.seed}")
    for name in (*positive, *zero_or_more, *fraction):
        value, flag = getattr(cfg, name), "--" + name.replace("_", "-")
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{flag} must be a finite number, got {value}")
        if name in positive and not value > 0:
            raise UserError(f"{flag} must be greater than 0, got {value}")
        if name in zero_or_more and not value >= 0:
            raise UserError(f"{flag} must be 0 or more, got {value}")
        if name in fraction and not 0 <= value < 1:
            raise UserError(f"{flag} must be at least 0 and below 1, got {value}")
    for name in ("vae_batch", "unet_batch"):  # one tensor of that many images: past this, only an allocation error
        if getattr(cfg, name, 0) > MAX_IMAGES:
            raise UserError(f"--{name.replace('_', '-')} must be at most {MAX_IMAGES}, got {getattr(cfg, name)}")
    if cfg.images > MAX_IMAGES:  # the whole data set is drawn into memory first, ~15 kB an image
        raise UserError(f"--images must be at most {MAX_IMAGES} (the data set is held in memory), got {cfg.images}")


@contextmanager
def output_folder(out: Path, overwrite: bool) -> Iterator[Path]:
    """An empty folder to save the model into, which becomes `out` once the body returns; on any failure it is
    removed and `out` is left as it was. Checked before any training: `out` must be a folder name, and one that
    already holds files is replaced only with `overwrite`.

    Everything temporary lives in one `<out>.<random>.partial` folder, the previous `out` included until the new
    one is in place: no fixed name beside `out` (an `<out>.old` or `<out>.partial` of the user's) is touched."""
    if out.name in ("", ".", ".."):
        raise UserError(f"--out must end in a folder name, got {str(out)!r}")
    if os.path.lexists(out) and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder: choose a folder name")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out {out} already holds files: pass --overwrite to replace them, or choose another folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=out.name + ".", suffix=".partial", dir=out.parent))
        (work / "model").mkdir()
    except OSError as e:
        raise disk_error(out, e) from None
    previous = work / "previous"
    try:
        try:
            yield work / "model"
        except Exception as e:  # a full disk while saving: one line (safetensors' error is not an OSError)
            raise_as_disk_error(out, e)
        try:
            follow_umask(work / "model")
            os.chmod(work / "model", 0o777 & ~current_umask())
            if os.path.lexists(out):
                out.rename(previous)
            (work / "model").rename(out)
        except OSError as e:
            if os.path.lexists(previous):
                previous.rename(out)
            raise disk_error(out, e) from None
    finally:
        if os.path.lexists(out) or not os.path.lexists(previous):  # else the user's old folder is only in there
            if not remove_tree(work):
                print(f"note: could not remove the temporary folder {work}; delete it by hand", file=sys.stderr)


def _lr_at(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _train_vae(cfg: TestbedTrainConfig, pixels: torch.Tensor, log: Callable[[str], None]):
    vae = build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    for step in range(cfg.vae_steps):
        for g in opt.param_groups:
            g["lr"] = cfg.vae_lr * _lr_at(step, cfg.vae_steps, cfg.warmup)
        x = pixels[torch.randint(0, len(pixels), (cfg.vae_batch,), generator=gen)]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        rec = F.mse_loss(recon, x)
        kl = post.kl().mean() / post.mean[0].numel()
        loss = rec + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % cfg.log_every == 0 or step == cfg.vae_steps - 1:
            log(f"vae step {step} recon {rec.item():.5f} kl {kl.item():.2f}")
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def _encode_means(vae, pixels: torch.Tensor) -> torch.Tensor:
    return torch.cat([vae.encode(pixels[i:i + 512]).latent_dist.mean for i in range(0, len(pixels), 512)])


@torch.no_grad()
def _reconstruction_check(vae, images) -> dict:
    from ..detectors.colour import read_image

    truth = [read_image(im) for im in images]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    recon = vae.decode(vae.encode(x).latent_dist.mean).sample
    out = ((recon.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    got = [read_image(im) for im in out]
    n = len(truth)
    return {
        "colour": sum(a.colour == b.colour for a, b in zip(truth, got)) / n,
        "shape": sum(a.shape == b.shape for a, b in zip(truth, got)) / n,
        "mse": float(((recon - x) ** 2).mean()),
    }


class Ema:
    """An exponential moving average of several modules' weights, kept by diffusers' EMAModel.

    Warm-up as before: decay = min(ema_decay, (1 + k) / (10 + k)) at update k, so that early on the average is
    not dominated by the random initial weights. (diffusers counts from the first update, which copies the
    weights (decay 0); the hand-written version kept 10 % of the initial weights there, a share that is below
    1e-25 after the 4,000 steps of the committed model.)
    """

    def __init__(self, modules: list[torch.nn.Module], decay: float):
        from diffusers.training_utils import EMAModel

        self.modules = modules
        self.averaged = [copy.deepcopy(m).requires_grad_(False) for m in modules]  # what is evaluated and saved
        self.ema = EMAModel(self._params(modules), decay=decay, use_ema_warmup=False, foreach=True)

    @staticmethod
    def _params(modules) -> list[torch.nn.Parameter]:
        return [p for m in modules for p in m.parameters()]

    def step(self) -> None:
        self.ema.step(self._params(self.modules))

    def current(self) -> list[torch.nn.Module]:
        """The averaged modules (eval mode), up to date."""
        self.ema.copy_to(self._params(self.averaged))
        return [m.eval() for m in self.averaged]


def assemble_pipeline(vae, text_encoder, tokenizer, unet):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=build_inference_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def train_testbed(cfg: TestbedTrainConfig, log: Callable[[str], None] = print) -> Path:
    check_ranges(cfg, positive=("images", "vae_steps", "vae_batch", "vae_lr", "unet_steps", "unet_batch", "unet_lr",
                                "log_every"),
                 zero_or_more=("kl_weight", "warmup", "eval_every"), fraction=("ema_decay",))
    out = Path(cfg.out)
    with output_folder(out, cfg.overwrite) as staging:
        started = _train_into(staging, cfg, log)
    log(f"saved {out} ({time.time() - started:.0f}s)")
    return out


def _train_into(staging: Path, cfg: TestbedTrainConfig, log: Callable[[str], None]) -> float:
    """Returns when it started."""
    from diffusers import DDPMScheduler

    from .measure import prompt_following

    started = time.time()
    torch.manual_seed(cfg.seed)

    images, prompts, _ = make_dataset(cfg.images, cfg.seed)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    log(f"data: {len(prompts)} images ({time.time() - started:.0f}s)")

    vae = _train_vae(cfg, pixels, log)
    means = _encode_means(vae, pixels)
    vae_check = _reconstruction_check(vae, images[:256])
    log(f"vae reconstructions read back by the classifier: {vae_check}")
    scale = float(1.0 / means.std())
    vae.register_to_config(scaling_factor=scale)
    latents = means * scale
    vae_seconds = time.time() - started
    log(f"vae done, scaling_factor {scale:.4f} ({vae_seconds:.0f}s)")

    tokenizer = build_tokenizer(staging / "tokenizer", vocabulary_words())
    ids = tokenizer(prompts, padding="max_length", max_length=MAX_LENGTH, truncation=True,
                    return_tensors="pt").input_ids
    text_encoder, unet = build_text_encoder(len(tokenizer), MAX_LENGTH), build_unet()
    ema = Ema([unet, text_encoder], cfg.ema_decay)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=1e-2)
    noise_scheduler = DDPMScheduler(**scheduler_kwargs())
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    history: list[dict] = []
    for step in range(cfg.unet_steps):
        for g in opt.param_groups:
            g["lr"] = cfg.unet_lr * _lr_at(step, cfg.unet_steps, cfg.warmup)
        idx = torch.randint(0, len(latents), (cfg.unet_batch,), generator=gen)
        z0 = latents[idx]
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (cfg.unet_batch,), generator=gen)
        zt = noise_scheduler.add_noise(z0, noise, t)
        pred = unet(zt, t, text_encoder(ids[idx])[0]).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.step()
        if step % cfg.log_every == 0:
            log(f"unet step {step} loss {loss.item():.4f} ({time.time() - started:.0f}s)")
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0:
            ema_unet, ema_te = ema.current()
            pipe = assemble_pipeline(vae, ema_te, tokenizer, ema_unet)
            pipe.set_progress_bar_config(disable=True)
            figures = prompt_following(pipe, per_colour=6, steps=20, colour_words={"crimson": "red"})
            figures.pop("images")
            history.append({"step": step + 1, **figures})
            log(f"eval at {step + 1}: {json.dumps(figures)}")

    ema_unet, ema_te = ema.current()
    pipe = assemble_pipeline(vae, ema_te, tokenizer, ema_unet)
    pipe.save_pretrained(str(staging), safe_serialization=True)
    (staging / "training_log.json").write_text(json.dumps({
        "config": asdict(cfg), "seconds_total": time.time() - started, "seconds_vae": vae_seconds, "vae_check": vae_check,
        "threads": torch.get_num_threads(), "evaluations": history,
    }, indent=2))
    return started


def main(argv: list[str] | None = None) -> int:
    from .train_families import FAMILIES, main as family_main

    argv = list(sys.argv[1:] if argv is None else argv)
    # The family decides which flags exist, so it is read first, on its own.
    families = ("sd1", *FAMILIES)
    pick = OneLineParser(prog="duo-unlearn testbed-train", add_help=False)
    pick.add_argument("--family", choices=families, default="sd1")
    if pick.parse_known_args(argv)[0].family != "sd1":
        return family_main(argv)

    p = OneLineParser(prog="duo-unlearn testbed-train", description=__doc__.splitlines()[0],
                      epilog="--family sdxl|sd3: the SDXL / SD3 test beds (see --family sdxl --help)")
    p.add_argument("--family", choices=families, default="sd1", help="which test bed (default sd1)")
    defaults = TestbedTrainConfig()
    for f in defaults.__dataclass_fields__.values():
        if f.name == "overwrite":
            p.add_argument("--overwrite", action="store_true", help="replace an --out that already holds files")
        else:
            p.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(defaults, f.name)),
                           default=getattr(defaults, f.name))
    args = vars(p.parse_args(argv))
    del args["family"]
    train_testbed(TestbedTrainConfig(**args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
