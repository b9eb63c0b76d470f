"""The bundled test bed: a tiny shapes-and-colours text-to-image model that runs on a CPU."""
from pathlib import Path

TESTBED_DIR = Path(__file__).resolve().parent / "model"
TESTBED_NAME = "testbed"
