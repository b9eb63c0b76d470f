"""The DUO training loop: a peft LoRA on the UNet, the reference being the same UNet with the adapter disabled."""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import TrainConfig
from .errors import UserError
from .export import adapter_metadata, atomic_save, check_writable, peft_to_kohya
from .esd_loss import esd_step
from .loss import duo_loss, output_preservation
from .models import LoadedModel, load_model
from .pair_dataset import PairRecord, load_image_tensor, read_pairs
from .progress import ProgressCallback, ProgressEvent, report

ADAPTER_NAME = "duo"


@dataclass
class TrainResult:
    adapter: Path
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    previews: list[Path] = field(default_factory=list)
    peak_memory_mb: float | None = None


@dataclass
class LatentCache:
    """Posterior mean/std of every pair image, encoded once; each step draws a fresh sample from them."""
    unsafe_mean: object
    unsafe_std: object
    safe_mean: object
    safe_std: object
    scaling: float
    shift: float
    empty: object  # empty-prompt embedding, 1 x L x D
    unsafe_cond: object | None = None  # per-pair prompt embeddings when conditioning on prompts
    safe_cond: object | None = None


def _resolution(pipe) -> int:
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


def build_cache(pipe, records: list[PairRecord], folder: Path, condition: str, device, progress) -> LatentCache:
    import torch

    size = _resolution(pipe)
    vae, dtype = pipe.vae.to(device), pipe.vae.dtype

    def encode(paths):
        means, stds = [], []
        for i in range(0, len(paths), 8):
            x = torch.stack([load_image_tensor(folder / p, size) for p in paths[i:i + 8]]).to(device, dtype)
            with torch.no_grad():
                dist = vae.encode(x).latent_dist
            means.append(dist.mean.float())
            stds.append(dist.std.float())
            report(progress, ProgressEvent("cache", i + len(x), len(paths), "encoding pair images"))
        return torch.cat(means), torch.cat(stds)

    um, us = encode([r.unsafe for r in records])
    sm, ss = encode([r.safe for r in records])

    def embed(prompts):
        with torch.no_grad():
            return pipe.encode_prompt(prompts, device, 1, False)[0].float()

    pipe.text_encoder.to(device)
    cache = LatentCache(um, us, sm, ss, float(vae.config.scaling_factor),
                        float(getattr(vae.config, "shift_factor", None) or 0.0), embed([""]))
    if condition in ("prompt", "unsafe"):
        cache.unsafe_cond = embed([r.unsafe_prompt for r in records])
        # "unsafe": both images of a pair under the unsafe prompt, i.e. "given this prompt, prefer the twin"
        cache.safe_cond = embed([r.safe_prompt for r in records]) if condition == "prompt" else cache.unsafe_cond
    # Cached: the VAE and the text encoder leave the training device for the rest of the run.
    vae.to("cpu")
    pipe.text_encoder.to("cpu")
    return cache


def _sample(mean, std, idx, gen):
    import torch

    eps = torch.randn(mean[idx].shape, generator=gen).to(mean.device)
    return mean[idx] + std[idx] * eps


def add_lora(unet, cfg: TrainConfig):
    from peft import LoraConfig

    names = [n for n, _ in unet.named_modules()]
    missing = [t for t in cfg.lora.target_modules if not any(n.endswith(t) for n in names)]
    if missing:
        raise UserError(f"no UNet module matches target(s) {', '.join(missing)}")
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, init_lora_weights="gaussian",
                                target_modules=list(cfg.lora.target_modules)), adapter_name=ADAPTER_NAME)
    return [p for p in unet.parameters() if p.requires_grad]


def lora_state(unet) -> dict:
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME)


def _optimizer(params, cfg: TrainConfig):
    import torch

    if cfg.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise UserError("use_8bit_adam needs bitsandbytes: pip install bitsandbytes") from None
        return bnb.optim.AdamW8bit(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


# -- checkpoints: a folder per step, written under a temp name and renamed, so each is complete or absent --

def _checkpoints(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit() and (p / "state.pt").exists():
            found.append((int(p.name[5:]), p))
    return sorted(found)


def save_checkpoint(root: Path, step: int, unet, optimizer, gen, history) -> Path:
    import torch
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in lora_state(unet).items()}, str(tmp / "lora.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "rng": gen.get_state(), "step": step}, tmp / "state.pt")
    (tmp / "history.json").write_text(json.dumps(history))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def load_checkpoint(path: Path, unet, optimizer, gen) -> tuple[int, list]:
    import torch
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    set_peft_model_state_dict(unet, load_file(str(path / "lora.safetensors")), adapter_name=ADAPTER_NAME)
    optimizer.load_state_dict(state["optimizer"])
    gen.set_state(state["rng"])
    return int(state["step"]), json.loads((path / "history.json").read_text())


def training_target(noise_scheduler, latents, noise, t):
    """What the UNet should predict: the noise (epsilon models) or the velocity (v-prediction models)."""
    if noise_scheduler.config.prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, t)
    return noise


def _accelerator(cfg: TrainConfig):
    from accelerate import Accelerator

    try:
        return Accelerator(mixed_precision=cfg.mixed_precision, cpu=cfg.device == "cpu")
    except ValueError as e:  # e.g. fp16 asked for on a machine without a GPU
        raise UserError(f"mixed_precision={cfg.mixed_precision}: {e}") from None


def train(cfg: TrainConfig, progress: ProgressCallback | None = None, model: LoadedModel | None = None,
          facts: dict | None = None) -> TrainResult:
    """Train a DUO adapter from a pair dataset and write it as a kohya LoRA file. Nothing is written on failure."""
    import torch

    cfg.validate()
    started = time.time()
    records = read_pairs(cfg.pairs)
    out = check_writable(cfg.out)
    model = model or load_model(cfg.model, cfg.config_dir)
    report(progress, ProgressEvent("load", message=f"loaded {model.name} ({model.family})"))
    pipe = model.pipe
    accelerator = _accelerator(cfg)
    device = accelerator.device
    torch.manual_seed(cfg.seed)
    # One CPU stream per process: the same draws on any device; each GPU of a multi-GPU run its own pairs.
    gen = torch.Generator().manual_seed(cfg.seed + accelerator.process_index)
    main_process = accelerator.is_main_process

    condition = "prompt" if cfg.method == "esd" else cfg.condition  # ESD conditions on the concept's prompts
    cache = build_cache(pipe, records, Path(cfg.pairs), condition, device, progress)
    unet = pipe.unet.to(device)
    params = add_lora(unet, cfg)
    for p in params:  # trainable weights stay fp32 under mixed precision
        p.data = p.data.float()
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    optimizer = _optimizer(params, cfg)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    raw_unet = accelerator.unwrap_model(unet)

    scheduler_cfg = pipe.scheduler.config
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler.from_config(scheduler_cfg)
    prediction = noise_scheduler.config.prediction_type
    if prediction not in ("epsilon", "v_prediction"):
        raise UserError(f"prediction type {prediction!r} is not supported (epsilon or v_prediction)")
    last_t = noise_scheduler.config.num_train_timesteps - 1
    t_max = min(cfg.t_max, noise_scheduler.config.num_train_timesteps)

    ckpt_root = cfg.checkpoint_path
    start, history = 0, []
    if cfg.resume:
        found = _checkpoints(ckpt_root)
        if found:
            start, history = load_checkpoint(found[-1][1], raw_unet, optimizer, gen)
            report(progress, ProgressEvent("train", start, cfg.steps, f"resumed from {found[-1][1].name}"))
    n, B, lam = len(records), cfg.batch_pairs, cfg.preservation_weight
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    for step in range(start, cfg.steps):
        idx = torch.randint(0, n, (B,), generator=gen)
        if cfg.method == "esd":
            loss, logs = esd_step(unet, raw_unet, accelerator, noise_scheduler, cache, idx, gen, (cfg.t_min, t_max),
                                  cfg.esd_eta)
        else:
            z_lose = (_sample(cache.unsafe_mean, cache.unsafe_std, idx, gen) - cache.shift) * cache.scaling
            z_win = (_sample(cache.safe_mean, cache.safe_std, idx, gen) - cache.shift) * cache.scaling
            noise = torch.randn(z_lose.shape, generator=gen).to(device)
            t = torch.randint(cfg.t_min, t_max, (2 * B,), generator=gen).to(device)
            latents, pair_noise = torch.cat([z_lose, z_win]), torch.cat([noise, noise])  # one noise draw per pair
            noisy = noise_scheduler.add_noise(latents, pair_noise, t)
            x = torch.cat([noisy, noise])  # the last B rows: pure noise x_T for output preservation
            timesteps = torch.cat([t, torch.full((B,), last_t, device=device)])
            if cache.unsafe_cond is not None:
                cond = torch.cat([cache.unsafe_cond[idx.to(cache.unsafe_cond.device)],
                                  cache.safe_cond[idx.to(cache.safe_cond.device)], cache.empty.expand(B, -1, -1)])
            else:
                cond = cache.empty.expand(3 * B, -1, -1)
            with accelerator.autocast():
                pred = unet(x, timesteps, cond).sample
                with torch.no_grad():
                    raw_unet.disable_adapters()
                    ref = unet(x, timesteps, cond).sample
                    raw_unet.enable_adapters()
            target = training_target(noise_scheduler, latents, pair_noise, t)
            p_lose, p_win, p_prior = pred.split(B)
            r_lose, r_win, r_prior = ref.split(B)
            dpo, inside = duo_loss(p_win, r_win, target[B:], p_lose, r_lose, target[:B], cfg.beta)
            prior = output_preservation(p_prior, r_prior)
            loss = dpo + lam * prior
            logs = {"loss": loss.item(), "dpo": dpo.item(), "prior": prior.item(),
                    "pref_acc": float((inside > 0).float().mean())}
        accelerator.backward(loss)
        if cfg.grad_clip > 0:
            accelerator.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        history.append({"step": step + 1, **logs})
        report(progress, ProgressEvent("train", step + 1, cfg.steps, logs=logs))
        done = step + 1
        if main_process and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
            path = save_checkpoint(ckpt_root, done, raw_unet, optimizer, gen, history)
            report(progress, ProgressEvent("checkpoint", done, cfg.steps, f"saved {path}"))
        if (main_process and cfg.preview_every and cfg.preview_prompts and done % cfg.preview_every == 0
                and done < cfg.steps):
            _preview(pipe, raw_unet, cfg, out.with_name(f"{out.stem}.preview-{done:06d}.png"), progress)

    accelerator.wait_for_everyone()
    result = TrainResult(out, cfg.steps, time.time() - started, history)
    if not main_process:
        return result
    report(progress, ProgressEvent("save", cfg.steps, cfg.steps, f"writing {out}"))
    raw_unet.eval()
    facts = dict(facts or {})
    facts.update({
        "method": cfg.method, "concept": cfg.concept or facts.get("concept", ""), "beta": cfg.beta,
        "lambda": lam, "lr": cfg.learning_rate, "steps": cfg.steps, "batch_pairs": B, "pairs": n,
        "t_range": [cfg.t_min, t_max], "condition": cfg.condition, "seed": cfg.seed,
        "unsafe_prompts": sorted({r.unsafe_prompt for r in records}),
        "safe_prompts": sorted({r.safe_prompt for r in records}),
        "base_model": model.name, "base_model_hash": model.sha256(), "family": model.family,
    })
    if cfg.method == "esd":
        facts.update({"esd_eta": cfg.esd_eta, "lambda": 0, "beta": None})
    meta = adapter_metadata(output_name=out.stem, family=model.family, rank=cfg.lora.rank, alpha=cfg.lora.alpha,
                            target_modules=cfg.lora.target_modules, duo=facts)
    atomic_save(peft_to_kohya(lora_state(raw_unet), cfg.lora.alpha), out, meta)
    result.seconds = time.time() - started
    if torch.cuda.is_available():
        result.peak_memory_mb = torch.cuda.max_memory_allocated() / 2**20
    if cfg.preview_prompts:
        result.previews.append(_preview(pipe, raw_unet, cfg, out.with_name(out.stem + ".preview.png"), progress))
    shutil.rmtree(ckpt_root, ignore_errors=True)  # the adapter is complete: intermediate states are spent
    report(progress, ProgressEvent("done", cfg.steps, cfg.steps, f"saved {out}"))
    return result


def _preview(pipe, unet, cfg: TrainConfig, path: Path, progress) -> Path:
    from .previews import base_vs_adapter, comparison_sheet, save_png

    report(progress, ProgressEvent("preview", message=f"preview {path.name}"))
    was_training = unet.training
    unet.eval()
    pipe.vae.to(unet.device)
    pipe.text_encoder.to(unet.device)
    base, adapted = base_vs_adapter(pipe, unet, list(cfg.preview_prompts), cfg.preview_seed, cfg.preview_steps,
                                    cfg.preview_guidance)
    pipe.vae.to("cpu")
    pipe.text_encoder.to("cpu")
    unet.train(was_training)
    return save_png(comparison_sheet(base, adapted, list(cfg.preview_prompts)), path)

