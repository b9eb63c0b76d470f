"""The one place that decides device and precision for every stage (pairs, cache, training, previews, eval).

Policy
------
- device "auto": the first CUDA GPU, else Apple MPS, else the CPU. "cuda", "cuda:N" and "mps" are refused with one
  line when torch cannot see that device, when the stage's config is validated (RuntimeConfig.validate), instead of
  after the model loads or inside a kernel.
- mixed_precision "auto": on CUDA bf16 where the card supports it (Ampere and newer), else fp16; fp32 ("no") on the
  CPU and on MPS. fp16 on the CPU is refused (accelerate refuses it too, and CPU fp16 kernels are slow or missing);
  bf16 on the CPU only when asked for by name.
- frozen weights (UNet, text encoder, VAE) are stored in the half type on CUDA (the official DUO code casts the UNet
  to fp16: ~1.7 GB less for SD 1.5) and fp32 otherwise; the VAE stays fp32 under fp16 when its config says
  `force_upcast` (diffusers' own rule for VAEs that overflow in fp16). Trainable LoRA weights, their gradients and
  the optimizer state are always fp32.
- gradient checkpointing "auto": on when estimate_training_bytes(...) exceeds the free memory of the device.
- attention: diffusers >= 0.20 on torch 2 already gives every Attention module AttnProcessor2_0, i.e. torch's
  scaled_dot_product_attention (checked for UNet and VAE on diffusers 0.42); use_sdpa() re-asserts it for modules
  that were switched to the classic processor (e.g. by set_default_attn_processor), without touching LoRA or
  IP-adapter processors. transformers >= 4.36 picks "sdpa" for CLIP on its own.
- after any job every pipeline component is back on ONE device, the runtime device, in its frozen dtype (place()),
  so the next job on the same loaded model (the tab's second click, the next concept of a preset) finds it there.
  The exception is a pipeline the device cannot hold whole (holds_whole(): Flux's T5 and NF4 transformer on a 16 GB
  card): training then places it in turns (the text encoders for the cache, then the denoiser) and leaves the
  text encoders on the CPU; pairs, previews, the erasure check, eval and the standalone tab's Compare sample it with
  diffusers' model offload (placed_for_sampling()).
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

from .errors import UserError

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N, mps"
PRECISION_CHOICES = ("auto", "no", "fp32", "fp16", "bf16")  # "fp32" is accepted as a name for accelerate's "no"
CHECKPOINTING_CHOICES = ("auto", "on", "off")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
# "auto" turns checkpointing on a little before the estimate reaches the free memory: the estimate is rough and
# the allocator needs slack for fragmentation.
CHECKPOINT_HEADROOM = 0.9
# Bytes the backward pass keeps per latent pixel per UNet row (policy rows only: the reference pass runs without
# grad), in half precision, for SD 1.5's UNet with the self-attention LoRA; see estimate_training_bytes. Measured
# on the CPU with torch.autograd.graph.saved_tensors_hooks (unique storages, weights excluded) at 16x16 and 32x32
# latents: 204 kB and 193 kB per pixel, so ~190 kB at 64x64; with diffusers' gradient checkpointing 36.6 kB at
# both, i.e. 0.19 of it. GPU attention kernels may keep a little less: check with benchmarks/gpu_memory.py.
SD1_ACTIVATION_BYTES_PER_LATENT_PIXEL = 190_000
CHECKPOINTED_ACTIVATION_FRACTION = 0.2


def _checkpointing_setting(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    text = str(value).strip().lower()
    aliases = {"true": "on", "1": "on", "yes": "on", "false": "off", "0": "off", "no": "off"}
    return aliases.get(text, text)


@dataclass
class RuntimeConfig:
    """Where and in which precision a job runs. Strings, so TOML, the CLI and the tab can all set them."""

    device: str = "auto"
    mixed_precision: str = "auto"
    gradient_checkpointing: str | bool = "auto"

    def validate(self) -> None:
        """Spelling, and whether this machine has the device and precision asked for: a stage's config checks it
        before a folder is made or a model loads, not minutes later when the model is placed."""
        resolve(self)

    def check_spelling(self) -> None:
        device = str(self.device).strip().lower()
        if not _DEVICE.match(device):
            raise UserError(f"device must be one of {DEVICE_CHOICES}, got {self.device!r}")
        if str(self.mixed_precision).strip().lower() not in PRECISION_CHOICES:
            raise UserError(f"mixed_precision must be one of {', '.join(PRECISION_CHOICES)}, "
                            f"got {self.mixed_precision!r}")
        if _checkpointing_setting(self.gradient_checkpointing) not in CHECKPOINTING_CHOICES:
            raise UserError(f"gradient_checkpointing must be one of {', '.join(CHECKPOINTING_CHOICES)}, "
                            f"got {self.gradient_checkpointing!r}")


@dataclass(frozen=True)
class Runtime:
    """A resolved RuntimeConfig: what every stage uses."""

    device: object  # torch.device
    frozen_dtype: object  # torch dtype of the frozen weights
    compute_dtype: object  # autocast dtype; torch.float32 means no autocast
    mixed_precision: str  # accelerate's name: "no", "fp16" or "bf16"
    gradient_checkpointing: str  # "auto", "on" or "off"; "auto" is settled by checkpointing()
    device_name: str = ""

    @property
    def trainable_dtype(self):
        import torch

        return torch.float32

    @property
    def half(self) -> bool:
        return self.mixed_precision != "no"

    def accelerator_kwargs(self) -> dict:
        """Keyword arguments for accelerate.Accelerator that put it on this runtime's device and precision."""
        import torch

        if self.device.type == "cuda" and self.device.index is not None:
            # accelerate's single-process device is torch.device("cuda"), i.e. the current device
            torch.cuda.set_device(self.device)
        return {"mixed_precision": self.mixed_precision, "cpu": self.device.type == "cpu"}

    def autocast(self):
        """Autocast to the compute dtype on this device; a no-op context in fp32."""
        import torch

        return torch.autocast(self.device.type, dtype=self.compute_dtype, enabled=self.half)

    def vae_dtype(self, vae) -> object:
        import torch

        if self.frozen_dtype == torch.float16 and getattr(getattr(vae, "config", None), "force_upcast", False):
            return torch.float32
        return self.frozen_dtype

    def free_bytes(self) -> int | None:
        return free_memory_bytes(self.device)

    def checkpointing(self, estimated_bytes: int) -> bool:
        """Settle "auto" against the memory free now on the device."""
        return decide_checkpointing(self.gradient_checkpointing, estimated_bytes, self.free_bytes())

    def describe(self, checkpointing: bool | None = None) -> str:
        """The one line the CLI prints before a job."""
        where = f"device {self.device}" + (f" ({self.device_name})" if self.device_name else "")
        if checkpointing is None:
            ckpt = {"on": "on", "off": "off"}.get(self.gradient_checkpointing, "auto")
        else:
            ckpt = "on" if checkpointing else "off"
        return (f"{where}, frozen weights {_dtype_name(self.frozen_dtype)}, LoRA fp32, "
                f"{'autocast ' + _dtype_name(self.compute_dtype) if self.half else 'no autocast'}, "
                f"gradient checkpointing {ckpt}")


def _dtype_name(dtype) -> str:
    name = str(dtype).replace("torch.", "")
    return {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(name, name)


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve(cfg: RuntimeConfig) -> Runtime:
    """Decide the device and the dtypes for this machine, refusing what it cannot do with one clear line."""
    import torch

    cfg.check_spelling()
    asked = str(cfg.device).strip().lower()
    if asked == "auto":
        asked = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if asked.startswith("cuda"):
        if not torch.cuda.is_available():
            build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise UserError(f"device {cfg.device} was asked for, but torch sees no CUDA GPU (torch "
                            f"{torch.__version__}, {build}); set the device to cpu or auto")
        count = torch.cuda.device_count()
        index = int(asked.split(":")[1]) if ":" in asked else torch.cuda.current_device()
        if index >= count:
            raise UserError(f"device {asked} does not exist: this machine has {count} CUDA GPU(s), cuda:0"
                            f"{f' to cuda:{count - 1}' if count > 1 else ''}")
        device = torch.device("cuda", index)
        name = torch.cuda.get_device_name(index)
    elif asked == "mps":
        if not _mps_available():
            raise UserError("device mps was asked for, but torch sees no Apple GPU; set the device to cpu or auto")
        device, name = torch.device("mps"), "Apple GPU"
    else:
        device, name = torch.device("cpu"), ""

    precision = str(cfg.mixed_precision).strip().lower()
    precision = "no" if precision == "fp32" else precision
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "no"
    if precision == "fp16" and device.type == "cpu":
        raise UserError("mixed_precision fp16 needs a GPU; on the CPU use no (fp32, the default there) or bf16")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"mixed_precision bf16 is not supported by {name}; use fp16 or auto")
    dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    return Runtime(device=device, frozen_dtype=dtype, compute_dtype=dtype, mixed_precision=precision,
                   gradient_checkpointing=_checkpointing_setting(cfg.gradient_checkpointing), device_name=name)


# -- memory --

def cuda_index(device) -> int:
    """The index of a CUDA device; "cuda" alone is the current one (the memory-fraction calls refuse it bare)."""
    import torch

    device = torch.device(device)
    return device.index if device.index is not None else torch.cuda.current_device()


def free_memory_bytes(device) -> int | None:
    """Memory a job can still use on the device: CUDA's free memory (within the process's memory fraction, where one
    is set) plus what torch holds cached but unused (as Forge counts it), the available RAM on the CPU; None where it
    cannot be known (MPS)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        reserved = torch.cuda.memory_reserved(device)
        fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda d: 1.0)(cuda_index(device))
        if fraction < 1.0:  # a host's cap on this process: the allocator refuses beyond it whatever the card has
            free = min(free, max(0, int(fraction * total) - reserved))
        return int(free + reserved - torch.cuda.memory_allocated(device))
    if device.type == "cpu":
        import psutil

        return int(psutil.virtual_memory().available)
    return None


def decide_checkpointing(setting, estimated_bytes: int, free_bytes: int | None) -> bool:
    """"on"/"off" (or a bool) as given; "auto": on when the estimate exceeds the free memory (with headroom).
    Unknown free memory (None) leaves it off: the job runs as fast as it can and an OOM message names the setting."""
    setting = _checkpointing_setting(setting)
    if setting not in CHECKPOINTING_CHOICES:
        raise UserError(f"gradient_checkpointing must be one of {', '.join(CHECKPOINTING_CHOICES)}, got {setting!r}")
    if setting != "auto":
        return setting == "on"
    if free_bytes is None:
        return False
    return estimated_bytes > CHECKPOINT_HEADROOM * free_bytes


def estimate_training_bytes(denoiser_params: int, lora_params: int, batch_rows: int, latent_hw: tuple[int, int],
                            frozen_bytes: int = 2, activation_bytes: int = 2, checkpointing: bool = False,
                            optimizer_state_bytes: int = 8,
                            activation_bytes_per_latent_pixel: int = SD1_ACTIVATION_BYTES_PER_LATENT_PIXEL,
                            reference_params: int = 0) -> int:
    """A deliberately simple estimate of the peak memory of one training step on the device, in bytes:

        frozen weights      denoiser_params * frozen_bytes (+ reference_params, for a separate reference copy)
        LoRA                lora_params * (4 weight + 4 gradient + optimizer_state_bytes)   (AdamW fp32: 8; 8-bit: 2)
        activations         batch_rows * H * W * activation_bytes_per_latent_pixel * activation_bytes / 2
                            times CHECKPOINTED_ACTIVATION_FRACTION under gradient checkpointing (only block
                            inputs are kept; the recomputed block's own activations are transient)

    batch_rows are the rows that carry gradients at the peak (DUO: train.estimated_rows); H x W is the latent
    size. activation_bytes_per_latent_pixel is per half-precision row and model-dependent (the default is SD 1.5's);
    the reference pass runs without grad and frees its activations layer by layer, so it adds no stored term. The
    text encoder and VAE are not counted: the latent cache takes them off the training step.
    """
    h, w = latent_hw
    weights = denoiser_params * frozen_bytes + reference_params * frozen_bytes
    lora = lora_params * (4 + 4 + optimizer_state_bytes)
    activations = batch_rows * h * w * activation_bytes_per_latent_pixel * activation_bytes // 2
    if checkpointing:
        activations = int(activations * CHECKPOINTED_ACTIVATION_FRACTION)
    return int(weights + lora + activations)


# -- placement --

def use_sdpa(module) -> int:
    """Give classic-processor attention modules torch's scaled_dot_product_attention; returns how many changed.
    Custom processors (LoRA, IP-adapter, xformers) are left as they are."""
    processors = getattr(module, "attn_processors", None)
    if not processors:
        return 0
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    changed = {name: AttnProcessor2_0() if type(proc) is AttnProcessor else proc for name, proc in processors.items()}
    count = sum(type(proc) is AttnProcessor for proc in processors.values())
    if count:
        module.set_attn_processor(changed)
    return count


@contextlib.contextmanager
def quiet_diffusers():
    """diffusers warns on every dtype cast of a model about "modules kept in float32" even when there are none
    (SDXL's img2img casts the VAE twice per call): a line per batch that tells the user nothing."""
    from diffusers.utils import logging as diffusers_logging

    before = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(before)


class _DropRepeatedLoraNotes:
    def filter(self, record) -> bool:
        message = record.getMessage()
        failed_load = message.startswith("Loading ") and "was unsuccessful with the following error" in message
        # a failed load: diffusers logs its whole error and then raises it; the caller says it in one line
        return not (message.startswith("No LoRA keys associated to") or failed_load)


@contextlib.contextmanager
def no_text_encoder_lora_note():
    """diffusers' load_lora_weights warns, per text encoder, that a LoRA file holds no text-encoder keys. DUO trains
    the denoiser only, so every DUO adapter would print that paragraph; its other warnings (keys it could not place)
    still show. A load that fails is raised to the caller, without diffusers' copy of the error on stderr first."""
    import logging

    loggers = [logging.getLogger(name) for name in ("diffusers.loaders.lora_base", "diffusers.loaders.peft")]
    note = _DropRepeatedLoraNotes()
    for logger in loggers:
        logger.addFilter(note)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(note)


def _quantized(module) -> bool:
    return bool(getattr(module, "is_quantized", False) or getattr(module, "quantization_config", None))


def pipeline_modules(pipe) -> dict:
    """The torch modules of a diffusers pipeline by component name (its tokenizers and scheduler left out)."""
    import torch

    return {name: c for name, c in pipe.components.items() if isinstance(c, torch.nn.Module)}


def components_to(pipe, device, dtype, vae_dtype=None, wait_on_cpu=()) -> None:
    """Move every torch module of a diffusers pipeline to one device and dtype (those in `wait_on_cpu` to the CPU, in
    the same dtype). LoRA weights still attached (peft's `lora_*` parameters) stay fp32 whatever the dtype: they are
    what training updates, and a resumed run must find them in full precision. (requires_grad cannot tell them
    apart: a freshly loaded model has it on everywhere.)"""
    import torch

    modules = pipeline_modules(pipe)
    with quiet_diffusers():
        for name, component in modules.items():
            target = vae_dtype if (name == "vae" and vae_dtype is not None) else dtype
            where = "cpu" if any(component is m for m in wait_on_cpu) else device
            if _quantized(component):
                component.to(device=where)  # quantised weights keep their storage; only the device changes
            else:
                component.to(device=where, dtype=target)
    for component in modules.values():
        for param_name, p in component.named_parameters():
            if ".lora_" in param_name and p.dtype != torch.float32:
                p.data = p.data.float()


def bytes_to_place(pipe, runtime: Runtime) -> int:
    """What moving the whole pipeline onto the runtime device would add there: the parameters and buffers not yet
    on it, in the frozen dtype (quantised weights at their stored size)."""
    import torch

    device, total = torch.device(runtime.device), 0
    for component in pipeline_modules(pipe).values():
        keep = _quantized(component)
        for t in list(component.parameters()) + list(component.buffers()):
            if t.device.type == device.type and (device.index is None or t.device.index in (None, device.index)):
                continue
            size = t.element_size() if keep or not t.is_floating_point() else runtime.frozen_dtype.itemsize
            total += t.numel() * size
    return total


def holds_whole(pipe, runtime: Runtime) -> bool:
    """Whether the device can hold every component at once and still train (the headroom is the checkpointing
    rule's). Unknown free memory (MPS) counts as yes: the job runs as it always did."""
    free = free_memory_bytes(runtime.device)
    return free is None or bytes_to_place(pipe, runtime) <= CHECKPOINT_HEADROOM * free


@contextlib.contextmanager
def placed_for_sampling(pipe, runtime: Runtime, wait_after=()):
    """The pipeline placed to sample with for the block: whole on the device where it fits (place()); else with
    diffusers' model offload, each model on the device only while it runs (T5-XXL, then the denoiser, then the VAE),
    and afterwards placed with `wait_after` (the text encoders) on the CPU, as training in turns leaves it."""
    if holds_whole(pipe, runtime):
        place(pipe, runtime)
        yield
        return
    place(pipe, runtime, wait_on_cpu=list(pipeline_modules(pipe).values()))  # cast on the CPU: the offload moves
    # them as they are
    with quiet_diffusers():
        pipe.enable_model_cpu_offload(device=runtime.device)
    try:
        yield
    finally:
        pipe.remove_all_hooks()
        place(pipe, runtime, wait_on_cpu=wait_after)


@contextlib.contextmanager
def sampling_mid_training(pipe, runtime: Runtime, denoiser, text_modules):
    """Sampling from inside a training job (the erasure check, previews): the denoiser in eval mode and the pipeline
    placed for sampling; afterwards the text encoders back on the CPU, where training keeps them (its prompts are
    cached), and the denoiser's mode as it was."""
    was_training = denoiser.training
    denoiser.eval()
    try:
        with placed_for_sampling(pipe, runtime, wait_after=text_modules):
            yield
    finally:
        for module in text_modules:
            module.to("cpu")
        denoiser.train(was_training)


def place(pipe, runtime: Runtime, wait_on_cpu=()) -> None:
    """Where every job starts and ends: all components on the runtime device in the frozen dtype (the VAE in
    runtime.vae_dtype), SDPA attention. Call it when a job starts and in a `finally` when it ends. Modules named in
    `wait_on_cpu` go to the CPU instead, in the same dtype, for a pipeline the device cannot hold whole."""
    components_to(pipe, runtime.device, runtime.frozen_dtype, runtime.vae_dtype(getattr(pipe, "vae", None)),
                  wait_on_cpu)
    for name in ("unet", "transformer", "vae"):
        module = getattr(pipe, name, None)
        if module is not None:
            use_sdpa(module)
