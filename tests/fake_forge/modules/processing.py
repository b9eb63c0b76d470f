"""modules/processing.py in Forge: the A1111 classes, and process_images that (through forge_model_reload and the
sampler's memory_management.load_models_gpu) brings the model onto the GPU itself before sampling."""
import importlib.util
import os
import sys

from backend import memory_management
from modules import sd_models

_spec = importlib.util.spec_from_file_location(
    "modules._a1111_processing",
    os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                 "fake_a1111", "modules", "processing.py"))
_a1111 = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _a1111  # dataclasses look their module up there
_spec.loader.exec_module(_a1111)

StableDiffusionProcessing = _a1111.StableDiffusionProcessing
StableDiffusionProcessingTxt2Img = _a1111.StableDiffusionProcessingTxt2Img
Processed = _a1111.Processed
calls = _a1111.calls


def process_images(p):
    p.sd_model, _ = sd_models.forge_model_reload()
    objs = p.sd_model.forge_objects
    memory_management.load_models_gpu([objs.clip])  # conditioning
    memory_management.load_models_gpu([objs.unet])  # backend/sampling/sampling_function.py
    memory_management.load_models_gpu([objs.vae])  # backend/patcher/vae.py decode
    return _a1111.process_images(p)
