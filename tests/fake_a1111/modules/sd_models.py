"""modules/sd_models.py (1.10): CheckpointInfo, select_checkpoint, unload_model_weights, reload_model_weights,
send_model_to_device. The model is a stand-in that only knows where it is (device) and its checkpoint."""
import os
import threading
import time

from modules import call_queue, shared

events = []  # (what, time, thread name, queue lock held)


class CheckpointInfo:
    def __init__(self, filename):
        self.filename = filename
        name = os.path.basename(filename)
        self.name = name
        self.name_for_extra = os.path.splitext(name)[0]
        self.model_name = os.path.splitext(name.replace("/", "_").replace("\\", "_"))[0]
        self.hash = "0123abcd"
        self.title = f"{name} [{self.hash}]"


class FakeSdModel:
    is_sdxl = False
    is_sd2 = False
    is_sd1 = True

    def __init__(self, info):
        self.sd_checkpoint_info = info
        self.sd_model_checkpoint = info.filename
        self.device = "cuda"
        self.lowvram = False


checkpoints_list = {}


def _log(what):
    events.append((what, time.time(), threading.current_thread().name, call_queue.queue_lock.locked()))


def register(filename):
    info = CheckpointInfo(filename)
    checkpoints_list[info.title] = info
    shared.opts.data["sd_model_checkpoint"] = info.title
    shared.sd_model = FakeSdModel(info)
    return info


def select_checkpoint():
    info = checkpoints_list.get(shared.opts.sd_model_checkpoint)
    if info is None and checkpoints_list:
        info = next(iter(checkpoints_list.values()))
    return info


def send_model_to_cpu(m):
    m.device = "cpu"


def send_model_to_device(m):
    _log("send_model_to_device")
    m.device = "cuda"


def unload_model_weights(sd_model=None, info=None):
    _log("unload_model_weights")
    send_model_to_cpu(sd_model or shared.sd_model)
    return sd_model


def reload_model_weights(sd_model=None, info=None, forced_reload=False):
    _log("reload_model_weights")
    checkpoint_info = info or select_checkpoint()
    sd_model = sd_model or shared.sd_model
    if sd_model is not None and sd_model.sd_model_checkpoint == checkpoint_info.filename and not forced_reload:
        return sd_model  # as in 1.10: the same checkpoint is not moved back by this call
    shared.sd_model = FakeSdModel(checkpoint_info)
    return shared.sd_model
