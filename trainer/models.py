"""Load a base model the way A1111 / ComfyUI users keep it: a diffusers folder or one checkpoint file."""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError, refuse_unreadable
from .testbed import TESTBED_FAMILIES, TESTBEDS, available_testbeds

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
_SD3_KEY = "model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias"
_KEY_FAMILIES = (  # the first key found decides; order matters (SDXL also has cond_stage-like keys)
    ("double_blocks.0.img_attn.qkv.weight", "flux"),  # BFL's transformer-only files (flux1-dev.safetensors)
    ("model.diffusion_model.double_blocks.0.img_attn.qkv.weight", "flux"),  # full checkpoints (ComfyUI/Forge)
    # a diffusers-named Flux transformer file: SD3's transformer has joint blocks with add_q_proj too, only Flux has
    # single-stream blocks
    ("single_transformer_blocks.0.attn.to_q.weight", "flux"),
    # a diffusers-named SD3 transformer file (a fine-tune shared as its transformer): Flux's matched above
    ("transformer_blocks.0.attn.add_q_proj.weight", "sd3"),
    (_SD3_KEY, "sd3"),
    ("conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight", "sdxl"),
    ("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight", "sd2"),
    ("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", "sd1"),
    ("cond_stage_model.transformer.embeddings.token_embedding.weight", "sd1"),
)


@dataclass
class LoadedModel:
    pipe: object  # a diffusers StableDiffusionPipeline
    family: str
    name: str
    source: Path

    def weights_file(self) -> Path:
        """The file whose hash identifies the base model (the checkpoint, or the folder's denoiser weights)."""
        if self.source.is_file():
            return self.source
        for sub in ("unet", "transformer"):
            found = sorted((self.source / sub).glob("diffusion_pytorch_model*.safetensors"))
            if found:
                return found[0]  # sharded weights: the first shard names the model
        raise UserError(f"no UNet or transformer weights found in {self.source}")

    def sha256(self) -> str:
        return file_sha256(self.weights_file())


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def resolve_model_path(spec: str | Path) -> Path:
    if str(spec) in TESTBEDS:
        folder = TESTBEDS[str(spec)]
        if not (folder / "model_index.json").exists():
            family = f" --family {TESTBED_FAMILIES[str(spec)]}" if str(spec) != "testbed" else ""
            raise UserError(f"the bundled test-bed model {spec!r} is missing from {folder}; "
                            f"rebuild it with `duo-unlearn testbed-train{family} --overwrite`")
        return folder
    path = Path(spec).expanduser()
    try:
        found = path.exists()
    except OSError as e:  # e.g. a name longer than the file system allows
        raise UserError(f"model {spec!r} cannot be used: {e.strerror or e}") from None
    if not found:
        raise UserError(f"model not found: {spec} (give a diffusers folder, a .safetensors/.ckpt file, or a bundled "
                        f"test bed: {', '.join(available_testbeds())})")
    return path


def family_from_keys(keys, name: str = "the checkpoint") -> str:
    keys = set(keys)
    for key, family in _KEY_FAMILIES:
        if key in keys:
            return family
    _refuse_partial_model(keys, name)
    raise UserError("unknown model family: the checkpoint has none of the keys of SD 1.x, SD 2.x, SDXL, SD3 or Flux "
                    "(is it a LoRA, a VAE or an embedding rather than a full model?)")


_REFINER_TEXT_ENCODER = "conditioner.embedders.0.model."  # OpenCLIP bigG as the refiner's only (first) embedder
_REFINER = ("is an SDXL refiner (an img2img model for the base model's last steps, with only the second text "
            "encoder): DUO removes a concept from a base model; unlearn on the SDXL base and keep the refiner as it is")
_UNET_PREFIXES = ("model.diffusion_model.", "")  # in a checkpoint, or a UNet file of its own (models/unet)


def _unet_kind(keys: set) -> str | None:
    """Which Stable Diffusion UNet the keys hold (LDM/SGM names with or without the checkpoint prefix, or diffusers
    names), from the key names only: "sdxl", "sdxl refiner", "sd1/sd2", or None when there is none.

    SDXL's UNet has an ADM input (label_emb / add_embedding) and no attention at the first level; the base has three
    levels (input_blocks 0-8, down_blocks 0-2), the refiner four (input_blocks 0-11, down_blocks 0-3)."""
    for prefix in _UNET_PREFIXES:
        if f"{prefix}input_blocks.0.0.weight" in keys:
            if f"{prefix}input_blocks.1.1.proj_in.weight" in keys:
                return "sd1/sd2"
            if f"{prefix}label_emb.0.0.weight" in keys:
                return "sdxl refiner" if f"{prefix}input_blocks.11.0.in_layers.0.weight" in keys else "sdxl"
    if "conv_in.weight" in keys and "time_embedding.linear_1.weight" in keys:
        if "down_blocks.0.attentions.0.proj_in.weight" in keys:
            return "sd1/sd2"
        if "add_embedding.linear_1.weight" in keys:
            return "sdxl refiner" if "down_blocks.3.resnets.0.conv1.weight" in keys else "sdxl"
    return None


def _refuse_partial_model(keys: set, name: str) -> None:
    """A single file that is not a full base model of a trained family, said in one line: the SDXL refiner, or a
    UNet saved without its VAE and text encoders."""
    unet = _unet_kind(keys)
    if unet == "sdxl refiner" or any(k.startswith(_REFINER_TEXT_ENCODER) for k in keys):
        raise UserError(f"{name} {_REFINER}")
    text = any(k.startswith(("cond_stage_model.", "conditioner.", "text_encoders.", "text_encoder")) for k in keys)
    if unet is not None and not text:  # a text encoder under names not known here: the unknown-family message
        label = {"sdxl": "an SDXL", "sd1/sd2": "an SD 1.x/2.x"}[unet]
        has_vae = any(k.startswith(("first_stage_model.", "vae.")) for k in keys)
        parts = "a UNet and a VAE, no text encoder" if has_vae else "only a UNet"
        raise UserError(f"{name} holds {parts} ({label} UNet): DUO needs the whole model; give a full checkpoint "
                        "(UNet, VAE and text encoders in one file) or a diffusers folder")


def json_object(path: Path) -> dict:
    """A JSON config file (model_index.json, a component's config.json) as a dict, or one line saying what is wrong
    with it: a folder, unreadable, not JSON, not an object."""
    refuse_unreadable(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not a JSON file") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} holds a JSON {type(data).__name__}, not the object of settings a config file holds")
    return data


def family_from_folder(folder: Path) -> str:
    index_file = folder / "model_index.json"
    if not index_file.exists():
        raise UserError(f"{folder} is not a diffusers model folder (no model_index.json)")
    index = json_object(index_file)
    cls = index.get("_class_name", "")
    if not isinstance(cls, str):
        raise UserError(f"{index_file}: _class_name must be the name of a pipeline class, got {cls!r}")
    if "XL" in cls and (index.get("requires_aesthetics_score") or not (index.get("text_encoder") or [None])[-1]):
        raise UserError(f"{folder} ({cls}) {_REFINER}")
    if cls.startswith("Flux"):
        return "flux"
    if "StableDiffusion3" in cls:
        return "sd3"
    if "XL" in cls:
        return "sdxl"
    if cls.startswith("StableDiffusion"):
        unet_config = folder / "unet" / "config.json"
        cross = json_object(unet_config).get("cross_attention_dim") if unet_config.exists() else None
        return "sd2" if cross == 1024 else "sd1"
    raise UserError(f"unknown model family: {folder} holds a {cls or 'unnamed'} pipeline, not Stable Diffusion")


def checkpoint_keys(path: Path) -> list[str]:
    """The state-dict keys of a checkpoint file, read once per file version: loading asks for them twice
    (the family, then the file's own options), and a .ckpt read is seconds."""
    refuse_unreadable(path)  # asked each time: a cached answer would outlive a chmod
    stat = path.stat()
    return list(_checkpoint_keys(str(path), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=8)
def _checkpoint_keys(name: str, mtime_ns: int, size: int) -> tuple[str, ...]:
    path = Path(name)
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors import SafetensorError

        try:
            with safe_open(str(path), framework="pt") as f:
                return tuple(f.keys())
        except (SafetensorError, OSError) as e:
            refuse_unreadable(path, e)
            raise UserError(f"{path} is not a readable safetensors file: {e}") from None
    import pickle

    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        refuse_unreadable(path, e)
        raise UserError(f"{path} could not be read as a weights-only checkpoint ({type(e).__name__}); "
                        "convert it to .safetensors, or check that it is a Stable Diffusion checkpoint") from None
    while isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):  # weights are named by strings
        raise UserError(f"{path} holds no state dict")
    return tuple(state)


def detect_family(path: Path) -> str:
    if path.is_dir():
        return family_from_folder(path)
    if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise UserError(f"{path}: unsupported model file type {path.suffix!r}; use .safetensors or .ckpt")
    return family_from_keys(checkpoint_keys(path), path.name)


def refuse_inside_model(out: str | Path, model_source: str | Path) -> None:
    """Never write into the model being trained (a diffusers folder's files, or the checkpoint itself)."""
    out, source = Path(out).resolve(), Path(model_source).resolve()
    if out == source or (source.is_dir() and source in out.parents):
        raise UserError(f"{out} is inside the model {source}: write the adapter somewhere else")


def _refuse_pickled_weights(folder: Path) -> None:
    """diffusers falls back to pickled .bin weights when a folder has no safetensors; a pickle can run code."""
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = [f for f in sub.iterdir() if f.is_file()]
        pickled = [f for f in files if f.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        if pickled and not any(f.suffix == ".safetensors" for f in files):
            raise UserError(f"{sub} holds its weights only as a pickle ({pickled[0].name}); duo-unlearn reads "
                            "safetensors only: convert the folder (diffusers save_pretrained(safe_serialization="
                            "True)) and try again")


def load_options(path: Path) -> dict:
    """What a single-file checkpoint says about itself that diffusers' from_single_file does not read.

    SDXL v-prediction checkpoints carry an empty `v_pred` tensor, the zero-terminal-SNR ones also `ztsnr` (as
    ComfyUI's supported_models.SDXL.model_type reads them). The result goes to family.load_kwargs/after_load.
    """
    if path.is_dir():
        return {}
    keys = set(checkpoint_keys(path))
    if "edm_mean" in keys or "edm_vpred.sigma_max" in keys:
        raise UserError(f"{path.name} is an EDM-parameterised model (Playground v2.5 / CosXL style); "
                        "DUO trains epsilon and v-prediction models")
    if any(key in keys for key, family in _KEY_FAMILIES if family == "flux"):
        return flux_options(path, keys)
    options = {}
    if (_SD3_KEY in keys and any(k.startswith("text_encoders.clip_") for k in keys)
            and not any(k.startswith("text_encoders.t5xxl.") for k in keys)):
        options["drop_t5"] = True  # sd3_medium_incl_clips: the file for small cards carries no T5 to load
    if "v_pred" in keys:
        options["prediction_type"] = "v_prediction"
        if "ztsnr" in keys:
            options["rescale_betas_zero_snr"] = True
    return options


_FLUX_GUIDANCE = ("guidance_in.in_layer.weight", "model.diffusion_model.guidance_in.in_layer.weight",
                  "time_text_embed.guidance_embedder.linear_1.weight")


def flux_variant_from_keys(keys) -> str:
    """[dev] is guidance-distilled and has the guidance embedding (guidance_in); [schnell] has none."""
    return "dev" if any(k in keys for k in _FLUX_GUIDANCE) else "schnell"


def flux_options(path: Path, keys) -> dict:
    """A Flux single file: which variant (its configs: FLUX.1-dev or FLUX.1-schnell) and whether it holds only the
    transformer (BFL's own files do: the VAE, CLIP-L and T5 then come from --config-dir, _load_denoiser_file). Files
    already quantised for inference (bitsandbytes NF4 as Forge ships them) cannot be read back into trainable
    weights: refused."""
    keys = set(keys)
    if any(k.endswith((".absmax", ".quant_map")) or ".quant_state." in k for k in keys):
        raise UserError(f"{path.name} is a bitsandbytes-quantised Flux checkpoint (an inference format); train from "
                        "the bf16/fp8 file and pass --quantize nf4 instead")
    options = {"flux_variant": flux_variant_from_keys(keys)}
    if not any(k.startswith(("vae.", "first_stage_model.", "text_encoders.", "cond_stage_model.")) for k in keys):
        options["transformer_only"] = True
    return options


def flux_variant_from_folder(folder: Path) -> str:
    config = folder / "transformer" / "config.json"
    if not config.exists():
        raise UserError(f"{folder} has no transformer/config.json: not a complete diffusers Flux folder")
    return "dev" if json.loads(config.read_text()).get("guidance_embeds") else "schnell"


def model_options(drop_t5: bool = False) -> dict:
    """The user's load choices as load_model's options."""
    return {"drop_t5": True} if drop_t5 else {}


def load_model(spec: str | Path, config_dir: str | Path | None = None, dtype=None,
               options: dict | None = None) -> LoadedModel:
    """Load a pipeline of any trained family, offline-friendly; the family is detected and recorded.

    options: what the file says about itself (models.load_options: v-prediction, ...) plus the user's choices
    (e.g. {"drop_t5": True} for SD3 on a small card), handed to the family's load_kwargs and after_load.
    """
    import torch

    from .families import get_family

    path = resolve_model_path(spec)
    family_name = detect_family(path)
    family = get_family(family_name)  # refuses a family this version cannot train, by name
    if (options or {}).get("drop_t5") and family_name != "sd3":
        raise UserError(f"--drop-t5 is for SD3 models (T5 is their optional third text encoder); {path.name} is "
                        f"{family_name}")
    options = {**load_options(path), **(options or {})}
    dtype = dtype or (getattr(torch, family.load_dtype) if family.load_dtype else torch.float32)
    kwargs = {**_no_safety_checker(family), **family.load_kwargs(options)}
    if path.is_dir():
        _refuse_pickled_weights(path)
        try:
            pipe = family.pipeline_cls().from_pretrained(
                str(path), dtype=dtype, local_files_only=True, use_safetensors=True, **kwargs)
        except (OSError, ValueError, EnvironmentError) as e:
            _refuse_unreadable_part(e, path)
            raise UserError(f"could not load the diffusers folder {path}: {str(e).splitlines()[0]}") from None
    else:
        pipe = _load_single_file(path, config_dir, dtype, family, kwargs)
    family.after_load(pipe, options)
    pipe.set_progress_bar_config(disable=True)
    testbed = next((n for n, folder in TESTBEDS.items() if path == folder), None)
    name = testbed or (path.stem if path.is_file() else path.name)
    return LoadedModel(pipe=pipe, family=family_name, name=name, source=path)


def _no_safety_checker(family) -> dict:
    """Unlearning is the safety measure here; SD 1.x/2.x pipelines otherwise print a long warning every run."""
    import inspect

    params = inspect.signature(family.pipeline_cls().__init__).parameters
    return {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in params else {}


def _hub_offline() -> bool:
    """The user's offline setting, read now: huggingface_hub.constants.HF_HUB_OFFLINE is frozen at its import."""
    import os

    from huggingface_hub.constants import ENV_VARS_TRUE_VALUES

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in ENV_VARS_TRUE_VALUES


_DENOISER_CLASSES = {"sd3": "SD3Transformer2DModel", "flux": "FluxTransformer2DModel"}
_TEXT_ENCODER_PREFIXES = ("text_encoders.", "cond_stage_model.", "conditioner.", "text_encoder")


def denoiser_only(path: Path, family_name: str) -> bool:
    """An SD3/SD3.5 or Flux file without text encoders (SAI's and BFL's own releases, and the usual way to share a
    fine-tuned transformer): the rest of the model comes from a full diffusers folder."""
    if family_name not in _DENOISER_CLASSES or path.is_dir():
        return False
    return not any(k.startswith(_TEXT_ENCODER_PREFIXES) for k in checkpoint_keys(path))


def _load_denoiser_file(path: Path, config_dir, dtype, family, family_kwargs: dict):
    """The transformer from the file, every other component (weights included) from --config-dir."""
    import diffusers

    if config_dir is None:
        raise UserError(f"{path.name} holds only the {family.denoiser_attr}: pass --config-dir DIR, a full diffusers "
                        f"folder of the same {family.name} model (its VAE and text encoders, weights included, are "
                        "read from there)")
    config_dir = Path(config_dir)
    if not (config_dir / "model_index.json").exists():
        raise UserError(f"--config-dir {config_dir} is not a diffusers model folder (no model_index.json)")
    json_object(config_dir / "model_index.json")  # a damaged index is one line, not diffusers' traceback
    denoiser_cls = getattr(diffusers, _DENOISER_CLASSES[family.name])
    try:
        denoiser = denoiser_cls.from_single_file(str(path), config=str(config_dir), subfolder=family.denoiser_attr,
                                                 torch_dtype=dtype, local_files_only=True)
        return family.pipeline_cls().from_pretrained(
            str(config_dir), **{family.denoiser_attr: denoiser}, dtype=dtype, local_files_only=True,
            use_safetensors=True, **family_kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        _refuse_unreadable_part(e, path, config_dir)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"could not load {path.name} with the components in {config_dir} ({first}); --config-dir "
                        f"must be a full diffusers folder of the same model, weights included") from None


def _load_single_file(path: Path, config_dir, dtype, family, family_kwargs: dict):
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    if denoiser_only(path, family.name):
        return _load_denoiser_file(path, config_dir, dtype, family, family_kwargs)

    kwargs = dict(dtype=dtype, **family_kwargs)
    tokenizers = []  # the config folder's tokenizer folders, checked before the load and after it
    if config_dir is not None:
        config_dir = Path(config_dir)
        if not (config_dir / "model_index.json").exists():
            raise UserError(f"--config-dir {config_dir} is not a diffusers model folder (no model_index.json)")
        tokenizers = _tokenizer_folders(config_dir, family_kwargs)
        _refuse_missing_tokenizers(config_dir, tokenizers)
        kwargs["config"] = str(config_dir)
    # Online users get the family's configs (a few kB, no weights) fetched by diffusers; offline users, or anyone
    # naming a config folder, must not wait on a network that is not there.
    offline = config_dir is not None or _hub_offline()
    try:
        pipe = family.pipeline_cls().from_single_file(str(path), local_files_only=offline, **kwargs)
    except SingleFileComponentError as e:  # a file with the key names of a full model, but not all its weights
        raise UserError(_missing_component(path, e)) from None
    except (OSError, ValueError) as e:
        _refuse_unreadable_part(e, path, *([config_dir] if config_dir is not None else []))
        if config_dir is not None:
            raise UserError(f"could not load {path.name} with the configs in {config_dir}: {e}") from None
        where = ("are not in the local Hugging Face cache (HF_HUB_OFFLINE is set)" if offline
                 else f"could not be fetched from the Hugging Face Hub ({type(e).__name__})")
        raise UserError(
            f"{path.name} is a single-file checkpoint and its diffusers configs (model_index.json, unet/, vae/, "
            f"text_encoder/, tokenizer/, scheduler/ configs) {where}. Pass --config-dir DIR: a diffusers folder of "
            f"the same family ({family.name}; e.g. a local copy of its diffusers repository without the weights)."
        ) from None
    except (KeyError, IndexError, RuntimeError) as e:  # keys that do not fit the family's layout
        raise UserError(f"could not convert {path.name} to a diffusers model ({type(e).__name__}: {e}); "
                        "is it a complete Stable Diffusion checkpoint?") from None
    _refuse_empty_tokenizers(pipe, config_dir, tokenizers)
    return pipe


def _refuse_unreadable_part(e: BaseException, *places: Path) -> None:
    """One line when a loader failed on a file of `places` that this user may not read. diffusers and transformers
    put that file in their own text (safetensors words it "No such file or directory"), so it is found again: the
    error's own file name, else the longest path under `places` that the message names, else `places` themselves."""
    text = str(e)
    named = []
    for place in places:
        try:
            named += [p for p in place.rglob("*") if str(p) in text]
        except OSError:  # a place that cannot be listed is checked itself below
            pass
    for candidate in sorted(named, key=lambda p: len(str(p)), reverse=True) + list(places):
        refuse_unreadable(candidate, e)


def _missing_component(path: Path, e: Exception) -> str:
    """diffusers' SingleFileComponentError as one line; its text ends in code to paste, of no use on a command line."""
    import re

    text = str(e)
    cls = re.search(r"Failed to load (\w+)", text)
    name = re.search(r"^(\w+) = ", text, re.MULTILINE)
    part = (f"the {name.group(1)} ({cls.group(1)})" if name and cls else f"the {cls.group(1)}" if cls
            else "a component's")
    return (f"{path.name} is missing parts of a full model: {part} weights are not in it; give a checkpoint that "
            "holds the whole model (UNet, VAE and text encoders), or its diffusers folder")


def _tokenizer_folders(config_dir: Path, passed: dict) -> list[Path]:
    """The tokenizer folders model_index.json names: a single-file load reads its tokenizers from --config-dir only,
    except those the family passes itself (`passed`: SD3 without T5 gives tokenizer_3=None)."""
    components = json_object(config_dir / "model_index.json")
    return [config_dir / name for name, spec in components.items()
            if name.startswith("tokenizer") and isinstance(spec, list) and None not in spec and name not in passed]


def _refuse_missing_tokenizers(config_dir: Path, tokenizers: list[Path]) -> None:
    """transformers builds a tokenizer with no vocabulary from an unreadable or empty folder instead of failing; the
    run would then stop at its first prompt with an OverflowError (model_max_length left at a 1e30 sentinel). An
    unreadable vocabulary file fails inside the tokenizers library with a bare Exception instead."""
    for folder in tokenizers:
        refuse_unreadable(folder)
        files = sorted(folder.iterdir()) if folder.is_dir() else []
        if not files:
            raise UserError(f"--config-dir {config_dir} has no tokenizer files in {folder}: copy the {folder.name}/ "
                            "folder of the model's diffusers repository there")
        for f in files:
            refuse_unreadable(f)


def _refuse_empty_tokenizers(pipe, config_dir: Path | None, tokenizers: list[Path]) -> None:
    """The loaded tokenizers, checked for a vocabulary: a folder of files that are not a tokenizer's (a stray README)
    leaves one with nothing but its special tokens, just as an empty folder does."""
    for folder in tokenizers:
        tokenizer = getattr(pipe, folder.name, None)
        if tokenizer is None or len(tokenizer) > len(set(tokenizer.all_special_tokens)):
            continue
        raise UserError(f"--config-dir {config_dir}: the tokenizer in {folder} has no vocabulary; copy the "
                        f"{folder.name}/ folder of the model's diffusers repository there")
