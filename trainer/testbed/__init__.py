"""The bundled test beds: tiny shapes-and-colours text-to-image models that run on a CPU.

`testbed` is the SD 1.x one (`model/`); `testbed-xl` (`model_xl/`, a StableDiffusionXLPipeline) and `testbed-sd3`
(`model_sd3/`, a StableDiffusion3Pipeline) are the same world in the SDXL and SD3 architectures.
"""
from pathlib import Path

_HERE = Path(__file__).resolve().parent
TESTBED_DIR = _HERE / "model"
TESTBED_NAME = "testbed"
TESTBEDS = {"testbed": TESTBED_DIR, "testbed-xl": _HERE / "model_xl", "testbed-sd3": _HERE / "model_sd3"}
TESTBED_FAMILIES = {"testbed": "sd1", "testbed-xl": "sdxl", "testbed-sd3": "sd3"}


def available_testbeds() -> list[str]:
    """The test beds whose model folder is present, in TESTBEDS order: what a model picker lists by name
    (a test bed whose folder is missing, e.g. not rebuilt after a clean, is not offered)."""
    return [name for name, folder in TESTBEDS.items() if (folder / "model_index.json").exists()]
