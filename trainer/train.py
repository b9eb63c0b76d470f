"""The training loop: a peft LoRA on the denoiser, the reference being the same network with the adapter disabled.

The loop knows neither the model family (it asks `families`) nor the method (it calls `steps.METHODS`).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import check_folder_writable
from .checkpoints import CheckpointFolder
from .concept_directions import check_condition, concept_directions, describe
from .config import TrainConfig
from .erasure_stop import erasure_check
from .errors import UserError
from .export import adapter_metadata, atomic_save, check_writable
from .families import get_family
from .latent_cache import build_cache
from .lora import add_lora, check_targets, lora_state, remove_lora
from .lr_schedule import build_schedule
from .models import LoadedModel, load_model, model_options, refuse_inside_model
from .on_policy_pairs import on_policy_pairs
from .pair_dataset import read_pairs
from .retain_set import read_retain
from .reward_scale import beta_for, full_swap_margin
from .previews import preview_path, refuse_existing_preview
from .progress import ProgressCallback, ProgressEvent, report
from .runtime import holds_whole, place, resolve, sampling_mid_training
from .steps import METHODS, StepContext, micro_batch


@dataclass
class TrainResult:
    adapter: Path
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    previews: list[Path] = field(default_factory=list)
    peak_memory_mb: float | None = None


def _optimizer(params, cfg: TrainConfig, lr: float):
    import torch

    if cfg.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise UserError("use_8bit_adam needs bitsandbytes: pip install bitsandbytes") from None
        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)


def _accelerator(rt):
    """accelerate for the process group (multi-GPU launches) and gradient sync; precision is the runtime's own
    (autocast + a GradScaler for fp16), so a second job in the same process may use another precision: accelerate
    keeps one state per process and refuses a second Accelerator with another mixed_precision."""
    from accelerate import Accelerator

    kwargs = rt.accelerator_kwargs()
    kwargs["mixed_precision"] = "no"
    return Accelerator(**kwargs)


def _scaler(rt):
    import torch

    return torch.amp.GradScaler("cuda") if rt.mixed_precision == "fp16" and rt.device.type == "cuda" else None


def estimated_rows(cfg: TrainConfig, compute_bytes: int, lam: float) -> int:
    """Rows of one pass that keep activations at the pass's peak, in rows of the compute dtype: DUO's unsafe and
    safe rows, and its pure-noise rows when λ > 0. In float32 those share the pairs' pass; under half precision they
    run in float32 (twice a row's bytes) and backpropagate before the pairs' pass (StepContext.preservation,
    duo_loss_on): the peak is the larger of the two."""
    pairs = min(cfg.micro_batch_pairs or cfg.batch_pairs, cfg.batch_pairs)
    rows = 2 * pairs
    if cfg.method == "duo" and lam:
        rows = rows + pairs if compute_bytes == 4 else max(rows, pairs * 4 // compute_bytes)
    return rows


def _checkpointing(rt, denoiser, cfg: TrainConfig, resolution: int, params, lam: float) -> bool:
    from .runtime import estimate_training_bytes

    side = resolution // 8
    estimate = estimate_training_bytes(
        denoiser_params=sum(p.numel() for p in denoiser.parameters()), lora_params=sum(p.numel() for p in params),
        batch_rows=estimated_rows(cfg, rt.compute_dtype.itemsize, lam), latent_hw=(side, side),
        frozen_bytes=rt.frozen_dtype.itemsize, activation_bytes=rt.compute_dtype.itemsize)
    return rt.checkpointing(estimate)


def lora_targets(cfg: TrainConfig, family) -> tuple[str, ...]:
    """The modules the LoRA goes on: the config's, else the family's default."""
    return tuple(cfg.lora.target_modules) or tuple(family.default_targets)


def check_lora_setup(denoiser, cfg: TrainConfig, family) -> None:
    """Every target names a module of this model and the rank fits them, and directions on layers that read only
    the prompt have a prompt to read: said before any pair is encoded or made."""
    targets = lora_targets(cfg, family)
    check_targets(denoiser, targets, cfg.lora.rank, family)
    check_condition(denoiser, family, targets, cfg.concept_directions, cfg.condition)


def _fingerprint(cfg: TrainConfig, model: LoadedModel, targets) -> dict:
    """What a checkpoint must share with the run that resumes it."""
    fingerprint = {"rank": cfg.lora.rank, "alpha": cfg.lora.alpha, "targets": list(targets), "method": cfg.method,
                   "family": model.family}
    if cfg.on_policy_pairs:  # only then: checkpoints from before on-policy pairs existed still resume
        fingerprint["on_policy_pairs"] = True
    if cfg.concept_directions:
        fingerprint["concept_directions"] = [cfg.concept_directions, list(cfg.close_concepts), cfg.close_weight]
    return fingerprint


def _accumulate(method, ctx, draw, B: int, micro: int, backward, step: int) -> dict:
    """One step's loss over micro-batches of the same draws: the same loss and gradient as one batch of B pairs."""
    logs: dict = {}
    for lo in range(0, B, micro):
        hi = min(lo + micro, B)
        ctx.loss_weight = (hi - lo) / B
        output = method.loss_on(ctx, micro_batch(draw, lo, hi))
        _finite(output.loss, step)
        if output.loss.requires_grad:
            backward(output.loss * ctx.loss_weight)
        for k, v in output.logs.items():
            logs[k] = logs.get(k, 0.0) + v * ctx.loss_weight
    return logs


def _finite(loss, step: int) -> None:
    if not math.isfinite(loss.item()):
        raise UserError(f"the loss became {loss.item()} at step {step}: training diverged (learning rate "
                        "too high, or beta/lambda too large); nothing was written, checkpoints so far are kept")


def train(cfg: TrainConfig, progress: ProgressCallback | None = None, model: LoadedModel | None = None,
          facts: dict | None = None) -> TrainResult:
    """Train a DUO adapter from a pair dataset and write it as a LoRA file. Nothing is written on failure."""
    import torch

    cfg.validate()
    started = time.time()
    records = read_pairs(cfg.pairs)
    uses_retain = (bool(cfg.lam_retain) and cfg.method == "duo") or bool(cfg.concept_directions)
    retain = read_retain(cfg.pairs) if uses_retain else []
    if uses_retain and not retain:
        needs = "--concept-directions" if cfg.concept_directions else "--lam-retain"
        raise UserError(f"{needs} needs a retain set in {cfg.pairs} (retain.jsonl): make the pairs with "
                        "--retain-prompt and --num-retain")
    out = check_writable(cfg.out, overwrite=cfg.overwrite)
    if cfg.preview_prompts:
        refuse_existing_preview(out, cfg.overwrite)
    if cfg.checkpoint_every:  # a read-only checkpoint folder is said now, not at the first checkpoint
        check_folder_writable(cfg.checkpoint_path)
    check = erasure_check(cfg, records)  # a wrong detector name is refused before the model loads
    model = model or load_model(cfg.model, cfg.config_dir, options=model_options(cfg.drop_t5))
    refuse_inside_model(out, model.source)
    if cfg.checkpoint_every:  # checkpoints are files written too: never among the model's
        refuse_inside_model(cfg.checkpoint_path, model.source)
    family = get_family(model.family)
    rt = resolve(cfg.runtime_config())
    pipe = model.pipe
    denoiser = family.denoiser(pipe)
    check_lora_setup(denoiser, cfg, family)  # before the pairs are encoded
    # A device that cannot hold every component at once (Flux's T5 beside its NF4 transformer on 16 GB) takes them
    # in turns: the text encoders and VAE for the cache while the denoiser waits on the CPU, then the denoiser.
    in_turns = not holds_whole(pipe, rt)
    place(pipe, rt, wait_on_cpu=[denoiser] if in_turns else ())  # frozen weights in the runtime's dtype
    report(progress, ProgressEvent("load", message=f"loaded {model.name} ({model.family}); {rt.describe()}"))
    if in_turns:
        report(progress, ProgressEvent("load", message="the device cannot hold the whole model: the text encoders "
                                                       "run first, then wait on the CPU while the denoiser trains"))
    accelerator = _accelerator(rt)
    device = rt.device
    torch.manual_seed(cfg.seed)
    # One CPU stream per process: the same draws on any device; each GPU of a multi-GPU run its own pairs.
    gen = torch.Generator().manual_seed(cfg.seed + accelerator.process_index)
    main_process = accelerator.is_main_process
    native = family.native_resolution(pipe)
    resolution = cfg.resolution or min(family.recipe_resolution or native, native)  # a recipe never upscales

    condition = "prompt" if cfg.method == "esd" else cfg.condition  # ESD conditions on the concept's prompts
    try:
        cache = build_cache(pipe, family, records, Path(cfg.pairs), condition, device, resolution, progress,
                            retain)
        for module in family.text_modules(pipe):  # cached: the text encoders wait on the CPU (T5: gigabytes)
            module.to("cpu")
        if in_turns:
            denoiser.to(device)  # already in the frozen dtype: place() cast it on the CPU
        params = add_lora(denoiser, cfg.lora.rank, cfg.lora.alpha, lora_targets(cfg, family))
        directions = None
        if cfg.concept_directions:
            report(progress, ProgressEvent("load", message=(
                f"measuring the concept's input directions ({describe(cfg.concept_directions)}) against the retain "
                "set")))
            directions = concept_directions(denoiser, family, family.noise_process(pipe, cache.resolution), cache,
                                            [r.prompt for r in retain], cfg.concept_directions, cfg.close_concepts,
                                            cfg.close_weight, cfg.seed, rt.autocast)
            report(progress, ProgressEvent("load", message=(
                f"the adapter reads only those directions, {directions.kept_share:.0%} of its layers' inputs (the "
                f"concept's stand out by ×{directions.top_ratio:.3g} at most)")))
        checkpointing = _checkpointing(rt, denoiser, cfg, resolution, params,
                                       cfg.preservation_weight_for(family.lambda_base))
        if checkpointing:
            report(progress, ProgressEvent("load", message="gradient checkpointing on"))
        return _run(cfg, progress, model, family, rt, accelerator, gen, cache, denoiser, params, records, out,
                    facts, started, main_process, checkpointing, check, directions)
    except BaseException:
        remove_lora(denoiser)  # a failed or cancelled job leaves the loaded model as it found it
        raise
    finally:
        if checkpointing_was_set(denoiser):
            denoiser.disable_gradient_checkpointing()
        # every component back where the next job (preview, second concept, second click) expects; the text
        # encoders stay on the CPU where they never fitted beside the denoiser
        place(pipe, rt, wait_on_cpu=family.text_modules(pipe) if in_turns else ())


def checkpointing_was_set(denoiser) -> bool:
    return bool(getattr(denoiser, "is_gradient_checkpointing", False))


def _run(cfg, progress, model, family, rt, accelerator, gen, cache, denoiser, params, records, out, facts, started,
         main_process, checkpointing, check, directions=None) -> TrainResult:
    import torch

    if checkpointing:
        denoiser.enable_gradient_checkpointing()
    denoiser.train()
    process = family.noise_process(model.pipe, cache.resolution)
    m_swap, t_mid = full_swap_margin(cache, process, (cfg.t_min, cfg.t_max))
    if cfg.kappa is not None and cfg.method == "duo":
        cfg = dataclasses.replace(cfg, beta=beta_for(cfg.kappa, m_swap))
        cfg.validate()  # a derived β can still give a non-finite lr or λ
    kappa = cfg.beta * m_swap
    if cfg.method == "duo":
        report(progress, ProgressEvent("train", 0, cfg.steps, f"β {cfg.beta:.4g}: full-swap margin {m_swap:.4g} at t "
                                                              f"{t_mid:g}, κ = β·m {kappa:.3g} (≈5: the preference "
                                                              "stops about at the swap; ≫5: well before it)"))
    lr, lam = cfg.learning_rate_for(family.lr_base), cfg.preservation_weight_for(family.lambda_base)
    optimizer = _optimizer(params, cfg, lr)
    # not handed to accelerate: it would step the schedule once per process; each process steps its own once
    schedule = build_schedule(optimizer, cfg.lr_scheduler, cfg.lr_warmup_steps, cfg.lr_cycles, cfg.steps)
    wrapped, optimizer = accelerator.prepare(denoiser, optimizer)
    raw = accelerator.unwrap_model(wrapped)
    scaler = _scaler(rt)

    def backward(loss):
        accelerator.backward(scaler.scale(loss) if scaler else loss)

    ctx = StepContext(family=family, process=process, denoiser=wrapped, raw=raw, cache=cache,
                      t_range=(cfg.t_min, cfg.t_max), shared_t=cfg.shared_t, beta=cfg.beta, lam=lam, lam_retain=cfg.lam_retain,
                      retain_t_range=cfg.retain_t_range,
                      esd_eta=cfg.esd_eta, autocast=rt.autocast, backward=backward, half=rt.half)
    method = METHODS[cfg.method]

    checkpoints = CheckpointFolder(cfg.checkpoint_path)
    fingerprint = _fingerprint(cfg, model, lora_targets(cfg, family))
    start, history = 0, []
    if cfg.resume:
        start, history = checkpoints.load_newest(raw, optimizer, gen, fingerprint, cfg.steps, scaler, schedule,
                                                 cache)
        if start:
            report(progress, ProgressEvent("train", start, cfg.steps, f"resumed at step {start}"))
    B = cfg.batch_pairs
    grower = on_policy_pairs(cfg, check, records)
    micro = min(cfg.micro_batch_pairs or B, B)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    done, erased = start, None
    for step in range(start, cfg.steps):
        idx = torch.randint(0, cache.pair_count(), (B,), generator=gen)
        draw = method.draw(ctx, idx, gen)
        logs: dict = {}
        while True:
            try:
                logs = _accumulate(method, ctx, draw, B, micro, backward, step + 1)
                break
            except torch.OutOfMemoryError:
                pass
            # Handled after the except block: the error's traceback holds the failed pass's tensors, and an error
            # raised inside the block would keep them (as its context) while the job puts the text encoders back
            # on the GPU, which then ran out of memory instead of saying this line (SDXL capped at 12 GB).
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            if micro == 1:
                raise UserError("out of GPU memory even at 1 pair per pass: set --gradient-checkpointing on, "
                                "--mixed-precision bf16 or fp16, or a smaller --resolution")
            micro = max(1, micro // 2)  # same draws, same loss: only the passes get smaller
            report(progress, ProgressEvent("train", step, cfg.steps, f"out of memory: {micro} pair(s) per "
                                                                      "pass from now on"))
        logs["lr"] = schedule.get_last_lr()[0]
        if scaler:
            scaler.unscale_(optimizer)
        if cfg.grad_clip > 0:
            accelerator.clip_grad_norm_(params, cfg.grad_clip)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if directions:  # AdamW's step (its weight decay too) leaves the span; back onto it before any forward
            directions.apply()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        history.append({"step": step + 1, **logs})
        report(progress, ProgressEvent("train", step + 1, cfg.steps, logs=logs))
        done = step + 1
        if check and check.due(done, cfg.steps):
            erased, added = _erased(check, model.pipe, raw, family, rt, main_process, grower, cache,
                                    sum("erased" in h for h in history) + 1, done < cfg.steps)
            if _after_check(erased, check, cfg, history, done, progress):
                break
            if added is not None:
                history[-1]["pairs_added"] = added
                report(progress, ProgressEvent("train", done, cfg.steps, f"step {done}: {added} of the check images "
                                               f"that still show the concept became pairs ({cache.pair_count()} now)"))
        if main_process and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
            path = checkpoints.save(done, raw, optimizer, gen, history, fingerprint, scaler, schedule, cache.grown)
            report(progress, ProgressEvent("checkpoint", done, cfg.steps, f"saved {path}"))
        if (main_process and cfg.preview_every and cfg.preview_prompts and done % cfg.preview_every == 0
                and done < cfg.steps):
            _preview(model.pipe, raw, cfg, out.with_name(f"{out.stem}.preview-{done:06d}.png"), progress, rt,
                     family)

    accelerator.wait_for_everyone()
    result = TrainResult(out, done, time.time() - started, history)
    if not main_process:
        return result
    report(progress, ProgressEvent("save", done, cfg.steps, f"writing {out}"))
    raw.eval()
    facts = dict(facts or {})
    facts.update({
        "method": cfg.method, "concept": cfg.concept or facts.get("concept", ""), "beta": cfg.beta,
        "kappa": round(kappa, 4), "swap_margin": round(m_swap, 6),
        "lambda": lam, "lambda_retain": cfg.lam_retain, "retain_images": cache.retain_size(), "lr": lr,
        "lr_scheduler": cfg.lr_scheduler, "lr_warmup_steps": cfg.lr_warmup_steps,
        "lr_cycles": cfg.lr_cycles, "steps": done, "batch_pairs": cfg.batch_pairs, "pairs": len(records),
        "t_range": [cfg.t_min, cfg.t_max],
        "retain_t_range": list(cfg.retain_t_range), "shared_t": cfg.shared_t, "condition": cfg.condition, "seed": cfg.seed,
        "target_modules": list(lora_targets(cfg, family)),
        "resolution": cache.resolution,
        "unsafe_prompts": sorted({r.unsafe_prompt for r in records}),
        "safe_prompts": sorted({r.safe_prompt for r in records}),
        "base_model": model.name, "base_model_hash": model.sha256(), "family": model.family,
    })
    if directions:
        facts.update({"concept_directions": cfg.concept_directions, "close_concepts": list(cfg.close_concepts),
                      "close_weight": cfg.close_weight, "concept_directions_top_ratio": round(directions.top_ratio, 4),
                      "concept_directions_share": round(directions.kept_share, 4)})
    if cfg.method == "esd":
        facts.update({"esd_eta": cfg.esd_eta, "lambda": 0, "beta": None, "kappa": None})
    if check:
        facts.update({"max_steps": cfg.steps, "stop_detector": check.detector.name, "stop_every": check.every,
                      "stop_erased": check.target, "last_check_erased": erased,
                      "erased_target_met": erased is not None and erased >= check.target})
    if grower:
        facts.update({"on_policy_pairs": True,
                      "on_policy_added": [h["pairs_added"] for h in history if "pairs_added" in h]})
    # a file whose lora_B already holds alpha / rank says scale 1 to any tool that reads ss_network_alpha
    meta = adapter_metadata(output_name=out.stem, family_meta=family.metadata(model.pipe), rank=cfg.lora.rank,
                            alpha=cfg.lora.rank if family.scale_in_weights else cfg.lora.alpha,
                            target_modules=lora_targets(cfg, family), duo=facts)
    # without --overwrite, a file that appeared at `out` during the run (another run, the user) is kept
    atomic_save(family.export(lora_state(raw), cfg.lora.alpha), out, meta, replace=cfg.overwrite)
    result.seconds = time.time() - started
    if torch.cuda.is_available():
        result.peak_memory_mb = torch.cuda.max_memory_allocated() / 2**20
    checkpoints.remove_spent()  # the adapter is complete: this run's intermediate states are spent
    if cfg.preview_prompts:
        result.previews.append(_preview(model.pipe, raw, cfg, preview_path(out), progress, rt, family,
                                        replace=cfg.overwrite))
    report(progress, ProgressEvent("done", done, cfg.steps, f"saved {out}"))
    return result


def _after_check(erased: float, check, cfg: TrainConfig, history: list, done: int, progress) -> bool:
    """Record a check and say what it found (a warning if the last one still finds the concept); True: stop."""
    history[-1]["erased"] = erased
    report(progress, ProgressEvent("train", done, cfg.steps, f"step {done}: the concept is gone from {erased:.0%} of "
                                                              "the check images"))
    if erased >= check.target:
        if done < cfg.steps:
            report(progress, ProgressEvent("train", done, cfg.steps, f"stopping at step {done}: at least "
                                                                      f"{check.target:.0%} erased"))
        return True
    if done == cfg.steps:
        report(progress, ProgressEvent("train", done, cfg.steps, f"warning: after all {done} steps the concept is "
                                       f"still in {1 - erased:.0%} of the check images; the adapter is saved, but "
                                       "try another --seed (or more --steps)"))
    return False


def _erased(check, pipe, raw, family, rt, main_process: bool, grower, cache, check_index: int, going_on: bool):
    """(erased fraction, pairs added or None). The main process samples and reads; every process gets its number,
    so all of them stop at the same step, and with on-policy pairs the same new pairs (none once training ends)."""
    from accelerate.utils import broadcast_object_list

    if not grower:
        value = [check.erased(pipe, raw, family, rt) if main_process else None]
        return broadcast_object_list(value)[0], None
    seed, grown = grower.seed(check_index), []

    def grow(images, flagged, batch):
        if going_on and 1 - sum(flagged) / len(flagged) < check.target:
            grown.append(grower.make(pipe, raw, family, cache.resolution, images, flagged, seed, batch))

    value = [check.erased(pipe, raw, family, rt, seed, grow) if main_process else None]
    value += [grown[0] if grown else None, bool(grown)]
    erased, new, made = broadcast_object_list(value)
    if new is not None:
        cache.add_pairs(new)
    return erased, (0 if new is None else len(new["source"])) if made else None


def _preview(pipe, denoiser, cfg: TrainConfig, path: Path, progress, rt, family, replace: bool = True) -> Path:
    from .previews import base_vs_adapter, comparison_sheet, save_png

    report(progress, ProgressEvent("preview", message=f"preview {path.name}"))
    # fp32 LoRA weights beside half-precision frozen ones: autocast
    with sampling_mid_training(pipe, rt, denoiser, family.text_modules(pipe)), rt.autocast():
        base, adapted = base_vs_adapter(pipe, denoiser, list(cfg.preview_prompts), cfg.preview_seed,
                                        cfg.preview_steps, cfg.preview_guidance)
    return save_png(comparison_sheet(base, adapted, list(cfg.preview_prompts)), path, replace=replace)
