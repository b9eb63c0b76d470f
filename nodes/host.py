"""The few ComfyUI services the nodes use, imported lazily: this file loads (and is tested) outside ComfyUI too."""
from __future__ import annotations

from pathlib import Path

from ..trainer.errors import UserError


def lora_names() -> list[str]:
    import folder_paths

    return folder_paths.get_filename_list("loras")


def lora_path(name: str) -> Path:
    """The file of a LoRA the loaders list, and only such a file: names come from the browser and from graphs.
    A link the user put in a loras folder is listed, and core LoraLoader loads it: so do these nodes."""
    import folder_paths

    if name not in folder_paths.get_filename_list("loras"):
        raise UserError(f"LoRA {name!r} is not in ComfyUI's loras folder (press R to refresh the lists)")
    return Path(folder_paths.get_full_path_or_raise("loras", name))


def loras_dir() -> Path:
    """Where new adapters go: the first loras folder, as ComfyUI's own savers choose the first output folder."""
    import folder_paths

    return Path(folder_paths.get_folder_paths("loras")[0])


def work_dir() -> Path:
    """Pair datasets and other intermediate files: under ComfyUI's output folder, never among the LoRAs."""
    import folder_paths

    return Path(folder_paths.get_output_directory()) / "duo-unlearn"


def checkpoint_names() -> list[str]:
    import folder_paths

    return folder_paths.get_filename_list("checkpoints")


def checkpoint_path(name: str) -> Path:
    import folder_paths

    if name not in folder_paths.get_filename_list("checkpoints"):
        raise UserError(f"checkpoint {name!r} is not in ComfyUI's checkpoints folder")
    return Path(folder_paths.get_full_path_or_raise("checkpoints", name))


def diffusers_config_dir(family: str, checkpoint: Path) -> Path | None:
    """A diffusers folder of the checkpoint's family and variant in models/diffusers, for single-file loading
    offline."""
    import folder_paths

    from ..trainer.config_folders import matching_config_dir

    candidates = []
    for root in folder_paths.get_folder_paths("diffusers"):
        root = Path(root)
        if root.is_dir():
            candidates += sorted(p for p in root.iterdir() if (p / "model_index.json").exists())
    return matching_config_dir(candidates, family, checkpoint)


def free_gpu() -> None:
    """Unload ComfyUI's models first: training needs the memory they hold."""
    import comfy.model_management as mm

    mm.unload_all_models()
    mm.soft_empty_cache(True)


def training_device() -> str:
    """ComfyUI's own device choice (--cpu, --directml, the selected GPU), so the job runs where ComfyUI runs."""
    import comfy.model_management as mm

    return str(mm.get_torch_device())


class ComfyProgress:
    """The trainer's progress callback: ComfyUI's progress bar, and its Cancel button as an interruption.

    Pairs and training report different totals; the bar restarts for each stage so it always shows the
    stage in hand.
    """

    def __init__(self, node_id: str | None = None):
        import comfy.utils

        self._bar_cls = comfy.utils.ProgressBar
        self._node_id = node_id
        self._bar = None
        self._stage = None
        self.events = []

    def __call__(self, event) -> bool:
        import comfy.model_management as mm

        # raises InterruptProcessingException, which ComfyUI reports as an interruption rather than an error
        mm.throw_exception_if_processing_interrupted()
        self.events.append(event.stage)
        if event.total:
            if self._bar is None or event.stage != self._stage:
                self._bar = self._bar_cls(event.total, node_id=self._node_id)
                self._stage = event.stage
            self._bar.update_absolute(event.step, event.total)
        if event.message:  # flushed: ComfyUI's log wrapper buffers stdout when it is not a terminal
            print(f"[DUO] {event.message}", flush=True)
        return True


def check_adapter_slot(path: Path) -> None:
    """The adapter's path lies directly in the loras folder and is not a link (extension/names.py checks the name)."""
    folder = loras_dir().resolve()
    if path.is_symlink() or path.resolve().parent != folder:
        raise UserError(f"{path.name} in the loras folder is a link to somewhere else; choose another lora_name")
