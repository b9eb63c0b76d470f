"""modules/shared.py: cmd_opts (argparse namespace, --lora-dir added by extensions-builtin/Lora/preload.py), opts,
sd_model (a property over sd_models.model_data in 1.6+) and state."""
import argparse
import os
import threading

from modules import paths

cmd_opts = argparse.Namespace(lora_dir=os.path.join(paths.models_path, "Lora"), ckpt_dir=None, ckpt=None,
                              lowvram=False, medvram=False, no_half=False)


class Options:
    def __init__(self):
        self.data = {"sd_model_checkpoint": None, "samples_save": True}

    def __getattr__(self, item):
        try:
            return self.__dict__["data"][item]
        except KeyError:
            raise AttributeError(item) from None


opts = Options()


class State:
    """modules/shared_state.py State: begin(job="(unknown)"), end(), interrupt()."""

    def __init__(self):
        self.job = ""
        self.interrupted = False
        self.events = []

    def begin(self, job: str = "(unknown)"):
        self.job, self.interrupted = job, False
        self.events.append(("begin", job, threading.current_thread().name))

    def end(self):
        self.events.append(("end", self.job, threading.current_thread().name))
        self.job = ""

    def interrupt(self):
        self.interrupted = True


state = State()
sd_model = None
