"""What differs between hosts: where LoRAs live, which model to train, how to free the GPU, how to generate.

StandaloneBackend uses diffusers for everything (adapters stacked with load_lora_weights + set_adapters).
A1111Backend imports `modules.*` only inside its methods: it trains with the trainer on the selected checkpoint
file after taking the host's model off the GPU, and compares with the host's own txt2img (`<lora:name:w>`), so
the picture is exactly what users get there.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from ..trainer.errors import UserError
from ..trainer.export import decode_duo
from ..trainer.progress import ProgressEvent, report
from ..trainer.runtime import no_text_encoder_lora_note
from .jobs import JobRunner

ADAPTER_EXT = ".safetensors"
FAMILY_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "sd3": "SD3", "flux": "Flux"}


def family_label(family: str | None) -> str:
    return FAMILY_LABELS.get(family or "", (family or "?").upper())


def testbeds_label() -> str:
    """The bundled test beds a model box accepts by name, with their families: "testbed (SD 1.x), testbed-xl (SDXL)".
    Only those whose weights are present."""
    from ..trainer.testbed import TESTBED_FAMILIES, available_testbeds

    return ", ".join(f"{name} ({family_label(TESTBED_FAMILIES[name])})" for name in available_testbeds())


@dataclass
class AdapterInfo:
    name: str  # the file stem: what `<lora:name:w>` and the dropdowns use
    path: Path
    duo: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    def row(self) -> dict:
        d = self.duo
        return {"name": self.name, "concept": d.get("concept", "?"), "beta": d.get("beta", "?"),
                "steps": d.get("steps", "?"), "pairs": d.get("pairs", "?"), "base model": d.get("base_model", "?"),
                "rank": self.metadata.get("ss_network_dim", "?")}


class Unreadable(NamedTuple):
    """A file or subfolder of the LoRA folder that a listing could not read."""
    path: Path
    reason: str  # "permission denied", or the system's words
    folder: bool


def why(error: OSError) -> str:
    """The reason in a few words: "permission denied" for EACCES/EPERM, else the system's words."""
    if isinstance(error, PermissionError):
        return "permission denied"
    return error.strerror or str(error) or type(error).__name__


def cannot_read(path: Path | str, error: OSError, what: str = "") -> str:
    """One line: `path` cannot be read, and why."""
    return f"{what}{path} cannot be read ({why(error)})"


def open_error(path: Path) -> OSError | None:
    """Why the file cannot be opened for reading (an unreadable file, or one in an unreadable folder), or None."""
    try:
        with open(path, "rb"):
            return None
    except FileNotFoundError:  # gone since it was listed: nothing to say about it
        return None
    except OSError as e:
        return e


def read_header(path: Path) -> dict:
    """The safetensors metadata only: no tensor is read (trainer.export.read_metadata, as everywhere)."""
    from ..trainer.export import read_metadata

    try:
        return read_metadata(path)
    except UserError as e:
        raise ValueError(str(e)) from None


class Backend:
    """The host-independent part: adapter discovery and the job runner."""

    host = "base"
    model_editable = True

    def __init__(self, lora_dir: str | Path, work_dir: str | Path | None = None):
        self.lora_dir = Path(lora_dir).expanduser()
        self.work_dir = Path(work_dir).expanduser() if work_dir else self.lora_dir / ".duo-unlearn"
        self.runner = JobRunner()
        self._headers: dict[Path, tuple[float, dict, int]] = {}  # path -> (mtime, metadata, ctime_ns)
        self.unreadable: list[Unreadable] = []  # what the last listing could not read

    # -- model --
    def default_model(self) -> str:
        raise NotImplementedError

    def model_for_training(self, spec: str) -> str:
        return spec

    def current_model_name(self, spec: str) -> str | None:
        """The name the trainer records as duo.base_model for this model (to warn about mismatches)."""
        return None

    def model_family(self, spec: str) -> str | None:
        """The model's family (sd1, sd2, sdxl, sd3, flux) from its keys or model_index.json: no weights loaded."""
        from ..trainer.models import detect_family, resolve_model_path

        return detect_family(resolve_model_path(spec))

    # -- adapters --
    def _adapter_files(self) -> tuple[list[Path], list[tuple[Path, OSError]]]:
        """(the .safetensors files under the LoRA folder, the subfolders that cannot be listed with the error);
        a LoRA folder that cannot be read is a UserError, not an empty folder."""
        what = "The LoRA folder "
        try:
            if not self.lora_dir.is_dir():
                return [], []
        except OSError as e:  # a parent folder that cannot be entered
            raise UserError(cannot_read(self.lora_dir, e, what)) from None
        files: list[Path] = []
        errors: list[OSError] = []
        for root, _dirs, names in os.walk(self.lora_dir, onerror=errors.append):  # symlinked folders not followed
            files += [Path(root, n) for n in names if n.endswith(ADAPTER_EXT)]
        top = os.fspath(self.lora_dir)
        for e in errors:
            if e.filename in (None, top):
                raise UserError(cannot_read(self.lora_dir, e, what))
        return files, [(Path(e.filename), e) for e in errors if not isinstance(e, FileNotFoundError)]

    def list_adapters(self) -> list[AdapterInfo]:
        """DUO adapters (files with duo.* metadata) under the LoRA folder, newest first. The files and subfolders
        that cannot be read go to self.unreadable (the table says so); an unreadable LoRA folder is a UserError."""
        found = []
        files, denied = self._adapter_files()
        try:
            work = self.work_dir.resolve() if self.work_dir.exists() else None
        except OSError:  # a work folder that cannot be reached: nothing of it gets listed anyway
            work = None

        def in_work(path: Path) -> bool:
            if work is None:
                return False
            resolved = path.resolve()  # follows links: one walk of the path, not two
            return work == resolved or work in resolved.parents

        unreadable = [Unreadable(path, why(e), True) for path, e in denied if not in_work(path)]
        for path in sorted(files):
            if in_work(path):
                continue
            if path.name.startswith("."):  # temp files of an atomic write
                continue
            try:
                st = path.stat()
                cached = self._headers.get(path)
                fresh = cached and cached[0] == st.st_mtime and cached[2] == st.st_ctime_ns  # chmod changes ctime
                meta = cached[1] if fresh else read_header(path)
                self._headers[path] = (st.st_mtime, meta, st.st_ctime_ns)
            except (OSError, ValueError) as e:
                error = e if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) else open_error(path)
                if error is not None:  # not listed, and not hidden either: the table names it
                    unreadable.append(Unreadable(path, why(error), False))
                continue
            duo = decode_duo(meta)
            if duo:
                found.append(AdapterInfo(path.stem, path, duo, {k: v for k, v in meta.items()
                                                                if not k.startswith("duo.")}))
        found.sort(key=lambda a: (-self._headers[a.path][0], a.name))
        self.unreadable = unreadable
        return found

    def find_adapter(self, name: str) -> AdapterInfo:
        for a in self.list_adapters():
            if a.name == name:
                return a
        present = [p for p in self._adapter_files()[0] if p.stem == name]
        if present:  # "not there" would send the user looking for a file that is there
            error = open_error(present[0])
            if error is not None:
                raise UserError(cannot_read(present[0], error))
            try:
                plain = not decode_duo(read_header(present[0]))
            except (OSError, ValueError):
                plain = False
            if plain:
                raise UserError(f"{present[0].name} is a LoRA without DUO metadata: Compare lists DUO adapters only "
                                "(apply other LoRAs in the prompt)")
            raise UserError(f"{present[0]} cannot be read as a DUO adapter (damaged, or still being written)")
        folders = [u for u in self.unreadable if u.folder]
        if folders:  # it may be in there
            raise UserError(f"adapter {name!r} is not in {self.lora_dir}, or it is in {folders[0].path}, which cannot "
                            f"be read ({folders[0].reason})")
        raise UserError(f"adapter {name!r} is not in {self.lora_dir} (press Refresh)")

    # -- work --
    def run_unlearn(self, cfg, progress=None):
        raise NotImplementedError

    def compare(self, model_spec: str, adapters: list[tuple[AdapterInfo, float]], prompt: str, negative: str,
                seed: int, steps: int, guidance: float, progress=None):
        """(base image, adapted image, note) for the same prompt and seed."""
        raise NotImplementedError


class StandaloneBackend(Backend):
    """diffusers in this process; the one loaded pipeline is shared by training and comparison."""

    host = "standalone"

    def __init__(self, lora_dir: str | Path, work_dir: str | Path | None = None, model: str = "testbed",
                 device: str = "auto"):
        super().__init__(lora_dir, work_dir)
        self._default_model = model
        self.device = device
        self._model = None  # (spec, LoadedModel)
        self._model_lock = threading.Lock()

    def default_model(self) -> str:
        return self._default_model

    def current_model_name(self, spec: str) -> str | None:
        from ..trainer.testbed import TESTBEDS

        spec = (spec or "").strip() or self._default_model
        if spec in TESTBEDS:  # the name the trainer records for a test bed, not its folder's
            return spec
        path = Path(spec).expanduser()
        return path.stem if path.is_file() else path.name

    def load(self, spec: str, progress=None):
        from ..trainer.models import load_model

        spec = (spec or "").strip() or self._default_model
        with self._model_lock:
            if self._model is not None and self._model[0] == spec and self._clean(self._model[1]):
                self._tidy(self._model[1])
                return self._model[1]
            self._model = None  # free the old pipeline before loading another
            report(progress, ProgressEvent("load", message=f"loading {spec}"))
            model = load_model(spec)
            self._model = (spec, model)
            return model

    @staticmethod
    def _modules(model) -> list:
        """The modules LoRAs attach to, for any family: the denoiser (UNet or transformer) and the text encoders."""
        from ..trainer.families import get_family

        family = get_family(model.family)
        return [family.denoiser(model.pipe), *family.text_modules(model.pipe)]

    @classmethod
    def _clean(cls, model) -> bool:
        """No LoRA layer left on the denoiser or a text encoder (a crashed comparison or training would leave one)."""
        return not any(getattr(m, "peft_config", None) for m in cls._modules(model))

    @classmethod
    def _tidy(cls, model) -> None:
        """Drop the empty peft bookkeeping that deleting the last adapter leaves (peft warns about it later)."""
        for module in cls._modules(model):
            if getattr(module, "peft_config", None) == {}:
                del module.peft_config

    def run_unlearn(self, cfg, progress=None):
        from ..trainer.unlearn import unlearn

        model = self.load(cfg.model, progress)
        return unlearn(cfg, progress=progress, model=model)

    def compare(self, model_spec, adapters, prompt, negative, seed, steps, guidance, progress=None):
        from ..trainer.families import get_family
        from ..trainer.previews import generate_images
        from ..trainer.runtime import RuntimeConfig, placed_for_sampling, resolve

        rt = resolve(RuntimeConfig(self.device))  # as the tab trains: the frozen weights in the half type on CUDA
        model = self.load(model_spec, progress)
        pipe = model.pipe
        names = []
        try:
            # loaded before placing: diffusers re-hooks a pipeline under its model offload when it loads a LoRA
            for k, (info, weight) in enumerate(adapters):
                name = f"duo_cmp_{k}"
                try:
                    with no_text_encoder_lora_note():
                        pipe.load_lora_weights(str(info.path), adapter_name=name)
                except (ValueError, KeyError, RuntimeError) as e:
                    raise UserError(f"{info.name} could not be loaded onto {model.name}: {e}") from None
                names.append(name)
            # whole on the device where it fits, else one model there at a time (the text encoders wait on the CPU
            # afterwards, as training in turns leaves them)
            with placed_for_sampling(pipe, rt, wait_after=get_family(model.family).text_modules(pipe)):
                report(progress, ProgressEvent("compare", 0, 2, "base image"))
                pipe.disable_lora()
                base = generate_images(pipe, [prompt], seed, steps, guidance, negative or None)[0]
                report(progress, ProgressEvent("compare", 1, 2, "with the adapters"))
                pipe.enable_lora()
                pipe.set_adapters(names, [float(w) for _, w in adapters])
                adapted = generate_images(pipe, [prompt], seed, steps, guidance, negative or None)[0]
        finally:
            if names:
                pipe.unload_lora_weights()
                self._tidy(model)
        report(progress, ProgressEvent("compare", 2, 2, "done"))
        stacked = " + ".join(f"{a.name}×{w:g}" for a, w in adapters)
        return base, adapted, f"diffusers on {model.name} ({family_label(model.family)}), seed {seed}, {steps} steps, guidance {guidance:g}: {stacked}"


class A1111Backend(Backend):
    """AUTOMATIC1111 / Forge. `modules` is imported inside methods only, so this file loads anywhere."""

    host = "a1111"
    model_editable = False

    def __init__(self, lora_dir: str | Path | None = None, work_dir: str | Path | None = None):
        from modules import paths, shared  # noqa: the host's own package

        lora_dir = lora_dir or getattr(shared.cmd_opts, "lora_dir", None) or os.path.join(paths.models_path, "Lora")
        data_path = getattr(paths, "data_path", None) or os.path.dirname(paths.models_path)
        super().__init__(lora_dir, work_dir or os.path.join(data_path, "outputs", "duo-unlearn"))

    @staticmethod
    def _checkpoint():
        from modules import sd_models

        info = sd_models.select_checkpoint()
        if info is None:
            raise UserError("no checkpoint is selected in the web UI")
        return info

    def default_model(self) -> str:
        try:
            return self._checkpoint().title
        except Exception:  # the UI is built before a model is chosen in some setups
            return "(the checkpoint selected at the top of the web UI)"

    def model_for_training(self, spec: str) -> str:
        """Always the checkpoint selected in the host, whatever the text box says."""
        return str(self._checkpoint().filename)

    def current_model_name(self, spec: str) -> str | None:
        try:
            return Path(self._checkpoint().filename).stem
        except Exception:
            return None

    @staticmethod
    def _queue_lock():
        try:
            from modules import call_queue

            return call_queue.queue_lock
        except (ImportError, AttributeError):
            return nullcontext()

    @staticmethod
    def _on_main_thread(fn, *args):
        """Forge runs model work on its main thread; A1111 runs it in the caller's thread."""
        try:
            from modules_forge import main_thread
        except ImportError:
            return fn(*args)
        box = {}

        def work():
            try:
                box["result"] = fn(*args)
            except BaseException as e:  # Forge's worker swallows exceptions: carry them back
                box["error"] = e
            return box.get("result")

        main_thread.run_and_wait_result(work)
        if "error" in box:
            raise box["error"]
        return box.get("result")

    @staticmethod
    def _forge_memory():
        """Forge's backend.memory_management, or None on A1111 (which has no `backend` package)."""
        try:
            from backend import memory_management
        except ImportError:
            return None
        return memory_management if hasattr(memory_management, "unload_all_models") else None

    @contextmanager
    def _host_model_off_gpu(self, progress):
        """Take the host's model off the GPU for the training, and put it back afterwards, even on failure."""
        memory = self._forge_memory()
        if memory is not None:
            with self._forge_model_off_gpu(memory, progress):
                yield
            return
        from modules import sd_models, shared

        report(progress, ProgressEvent("load", message="freeing the web UI's model from the GPU"))
        self._on_main_thread(sd_models.unload_model_weights)
        try:
            yield
        finally:
            try:
                self._on_main_thread(sd_models.reload_model_weights)
                send = getattr(sd_models, "send_model_to_device", None)
                if send is not None and getattr(shared, "sd_model", None) is not None:
                    self._on_main_thread(send, shared.sd_model)
            except Exception as e:  # the adapter is already safe on disk: say so instead of hiding it
                print(f"[duo-unlearn] could not reload the web UI's model ({type(e).__name__}: {e}); "
                      "select the checkpoint again at the top of the page")

    @contextmanager
    def _forge_model_off_gpu(self, memory, progress):
        """Forge: sd_models.reload_model_weights / send_model_to_device are empty stubs there (and
        unload_model_weights was one too in late 2024); its models live in backend.memory_management, which moves
        them to the GPU when a generation asks (load_models_gpu). So free with that module, as Forge's own Spaces
        do before running a foreign app, and leave the reload to Forge's next generation."""
        report(progress, ProgressEvent("load", message="freeing Forge's models from the GPU"))

        def free():
            memory.unload_all_models()
            memory.soft_empty_cache(force=True)

        self._on_main_thread(free)
        try:
            yield
        finally:
            try:  # hand back what the training left in torch's cache, so Forge sees the memory as free
                self._on_main_thread(memory.soft_empty_cache, True)
            except Exception as e:
                print(f"[duo-unlearn] could not empty the CUDA cache ({type(e).__name__}: {e})")

    def run_unlearn(self, cfg, progress=None):
        from ..trainer.unlearn import unlearn

        report(progress, ProgressEvent("load", message="waiting for the web UI to finish its current generation"))
        with self._queue_lock():
            with self._host_model_off_gpu(progress):
                return unlearn(cfg, progress=progress)

    def _txt2img(self, prompt, negative, seed, steps, guidance):
        from modules import processing, shared

        model = getattr(shared, "sd_model", None)
        try:  # the family of the selected file: SDXL/SD3/Flux checkpoints at 1024 even where the host has no flag
            family = self.model_family(self.model_for_training(""))
        except Exception:
            family = None
        size = (1024 if getattr(model, "is_sdxl", False) or family in ("sdxl", "sd3", "flux")
                else 768 if getattr(model, "is_sd2", False) else 512)
        p = processing.StableDiffusionProcessingTxt2Img(
            sd_model=model, outpath_samples=str(self.work_dir / "compare"), outpath_grids=str(self.work_dir / "compare"),
            prompt=prompt, negative_prompt=negative or "", seed=int(seed), steps=int(steps), cfg_scale=float(guidance),
            width=size, height=size, n_iter=1, batch_size=1, do_not_save_samples=True, do_not_save_grid=True)
        try:
            processed = self._on_main_thread(processing.process_images, p)
        finally:
            close = getattr(p, "close", None)
            if close:
                close()
        if processed is None or not getattr(processed, "images", None):
            raise UserError("the web UI produced no image (see its console for the reason)")
        return processed.images[0]

    def compare(self, model_spec, adapters, prompt, negative, seed, steps, guidance, progress=None):
        from modules import shared

        tags = " ".join(f"<lora:{a.name}:{w:g}>" for a, w in adapters)
        state = getattr(shared, "state", None)
        with self._queue_lock():
            if state is not None and hasattr(state, "begin"):
                state.begin(job="duo-unlearn compare")
            try:
                report(progress, ProgressEvent("compare", 0, 2, "base image"))
                base = self._txt2img(prompt, negative, seed, steps, guidance)
                report(progress, ProgressEvent("compare", 1, 2, "with the adapters"))
                adapted = self._txt2img(f"{prompt} {tags}", negative, seed, steps, guidance)
            finally:
                if state is not None and hasattr(state, "end"):
                    state.end()
        report(progress, ProgressEvent("compare", 2, 2, "done"))
        try:
            on = f" on {self.current_model_name('')} ({family_label(self.model_family(self.model_for_training('')))})"
        except Exception:
            on = ""
        return base, adapted, f"web UI txt2img{on}, seed {seed}, {steps} steps, CFG {guidance:g}; prompt: {prompt} {tags}"
