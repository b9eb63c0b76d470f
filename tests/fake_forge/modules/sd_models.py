"""modules/sd_models.py as in current Forge (dfdcbab, June 2025): the A1111 names remain, but
reload_model_weights, send_model_to_device and send_model_to_cpu are empty stubs (`pass`) and unload_model_weights
only calls memory_management.unload_all_models() (it was a stub too from Aug to Oct 2024). Forge loads the
checkpoint in forge_model_reload() and moves models with backend.memory_management."""
import os
import threading

from backend import memory_management
from modules import call_queue, shared

events = []  # calls of the A1111-era functions: (what, thread name, queue lock held)


class CheckpointInfo:
    def __init__(self, filename):
        self.filename = filename
        name = os.path.basename(filename)
        self.name = name
        self.name_for_extra = os.path.splitext(name)[0]
        self.model_name = os.path.splitext(name.replace("/", "_").replace("\\", "_"))[0]
        self.hash = "0123abcd"
        self.title = f"{name} [{self.hash}]"


class ForgeObjects:
    def __init__(self):
        self.unet = memory_management.ModelPatcher("unet")
        self.clip = memory_management.ModelPatcher("clip")
        self.vae = memory_management.ModelPatcher("vae")


class FakeSdModel:
    is_sdxl = False
    is_sd2 = False
    is_sd1 = True

    def __init__(self, info):
        self.sd_checkpoint_info = info
        self.sd_model_checkpoint = info.filename
        self.filename = info.filename
        self.forge_objects = ForgeObjects()

    @property
    def device(self):
        return self.forge_objects.unet.current_device


checkpoints_list = {}


def _log(what):
    events.append((what, threading.current_thread().name, call_queue.queue_lock.locked()))


def register(filename):
    """Test helper: the checkpoint is selected and loaded, its models on the GPU as after a generation."""
    info = CheckpointInfo(filename)
    checkpoints_list[info.title] = info
    shared.opts.data["sd_model_checkpoint"] = info.title
    shared.sd_model = FakeSdModel(info)
    memory_management.current_loaded_models.clear()
    memory_management.events.clear()
    objs = shared.sd_model.forge_objects
    memory_management.load_models_gpu([objs.unet, objs.clip, objs.vae])
    memory_management.events.clear()
    return info


def select_checkpoint():
    info = checkpoints_list.get(shared.opts.sd_model_checkpoint)
    if info is None and checkpoints_list:
        info = next(iter(checkpoints_list.values()))
    return info


def forge_model_reload():
    return shared.sd_model, False


def send_model_to_cpu(m):
    _log("send_model_to_cpu")


def send_model_to_device(m):
    _log("send_model_to_device")


def reload_model_weights(sd_model=None, info=None, forced_reload=False):
    _log("reload_model_weights")


def unload_model_weights(sd_model=None, info=None):
    _log("unload_model_weights")
    memory_management.unload_all_models()
    return
