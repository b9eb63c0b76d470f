"""The bundled test beds: tiny shapes-and-colours text-to-image models that run on a CPU.

`testbed` is the SD 1.x one (`model/`); `testbed-xl` (`model_xl/`, a StableDiffusionXLPipeline) and `testbed-sd3`
(`model_sd3/`, a StableDiffusion3Pipeline) are the same world in the SDXL and SD3 architectures.
"""
from pathlib import Path

_HERE = Path(__file__).resolve().parent
TESTBED_DIR = _HERE / "model"
TESTBED_NAME = "testbed"
TESTBEDS = {"testbed": TESTBED_DIR, "testbed-xl": _HERE / "model_xl", "testbed-sd3": _HERE / "model_sd3"}
