"""backend/memory_management.py (Forge, read at lllyasviel/stable-diffusion-webui-forge dfdcbab, June 2025): Forge
keeps its models as patchers in `current_loaded_models`; load_models_gpu puts them on the GPU when a generation
needs them, free_memory / unload_all_models move them to their offload device, soft_empty_cache(force=False)
empties torch's CUDA cache. Same names and signatures; the models are stand-ins that only know their device."""
import threading

from modules import call_queue

events = []  # (function, thread name, queue lock held)
current_loaded_models = []


def _log(what):
    events.append((what, threading.current_thread().name, call_queue.queue_lock.locked()))


class ModelPatcher:
    """backend/patcher/base.py ModelPatcher, reduced to where its model is."""

    def __init__(self, name, load_device="cuda", offload_device="cpu"):
        self.name = name
        self.load_device = load_device
        self.offload_device = offload_device
        self.current_device = offload_device


class LoadedModel:
    def __init__(self, model):
        self.model = model
        self.device = model.load_device

    def model_load(self, model_gpu_memory_when_using_cpu_swap=-1):
        self.model.current_device = self.model.load_device
        return self.model

    def model_unload(self, avoid_model_moving=False):
        if not avoid_model_moving:
            self.model.current_device = self.model.offload_device

    def __eq__(self, other):
        return self.model is other.model


def get_torch_device():
    return "cuda"


def free_memory(memory_required, device, keep_loaded=[], free_all=False):
    for i in range(len(current_loaded_models) - 1, -1, -1):
        m = current_loaded_models[i]
        if m.device == device and m not in keep_loaded:
            current_loaded_models.pop(i).model_unload()


def load_models_gpu(models, memory_required=0, hard_memory_preservation=0):
    _log("load_models_gpu")
    for model in models:
        loaded = LoadedModel(model)
        if loaded not in current_loaded_models:
            loaded.model_load()
            current_loaded_models.insert(0, loaded)


def load_model_gpu(model):
    return load_models_gpu([model])


def soft_empty_cache(force=False):
    _log("soft_empty_cache")


def unload_all_models():
    _log("unload_all_models")
    free_memory(1e30, get_torch_device(), free_all=True)
