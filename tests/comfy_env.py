"""A separate venv for real-ComfyUI tests, so ComfyUI's requirements never touch the project's environment.

Cached under tests/.venvs/comfyui (git-ignored) and rebuilt only when the requirement list below changes. It holds
torch/torchvision (ComfyUI's pins come from the local wheel cache), what ComfyUI imports at start-up, and the pack's
own requirements.txt, as a user gets after cloning into custom_nodes/ and running pip there.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / "tests" / ".venvs" / "comfyui"
# What ComfyUI 0.3.64 imports to start and serve. Left out on purpose: torchaudio (no build for this torch; ComfyUI
# only loses its audio nodes), comfyui-workflow-templates (84 MB of core templates the tests do not open).
COMFY_REQUIREMENTS = [
    "torch==2.14.1", "torchvision==0.29.1", "comfyui-frontend-package==1.27.10", "comfyui-embedded-docs==0.2.6",
    "torchsde", "numpy>=1.25.0", "einops", "transformers>=4.37.2", "tokenizers>=0.13.3", "sentencepiece",
    "safetensors>=0.4.2", "aiohttp>=3.11.8", "yarl>=1.18.0", "pyyaml", "Pillow", "scipy", "tqdm", "psutil",
    "alembic", "SQLAlchemy", "av>=14.2.0", "kornia>=0.7.1", "spandrel", "pydantic~=2.0", "pydantic-settings~=2.0",
]


def comfyui_dir() -> Path | None:
    """COMFYUI_DIR, else ../shared/comfyui-src next to the repository, else None."""
    given = os.environ.get("COMFYUI_DIR")
    if given:
        return Path(given).expanduser().resolve()
    default = REPO.parent / "shared" / "comfyui-src"
    return default.resolve() if (default / "main.py").exists() else None


def _stamp() -> str:
    pack_reqs = (REPO / "requirements.txt").read_text()
    return hashlib.sha256(("\n".join(COMFY_REQUIREMENTS) + pack_reqs + sys.version).encode()).hexdigest()[:16]


def python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv(log=print) -> Path:
    """The venv's python, creating or refreshing the venv when its stamp is stale."""
    stamp_file = VENV / ".duo-stamp"
    stamp = _stamp()
    if python().exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        return python()
    if VENV.exists():
        shutil.rmtree(VENV)
    log(f"creating the ComfyUI test venv in {VENV} (cached afterwards)")
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(python()), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + COMFY_REQUIREMENTS, check=True)
    # the pack as ComfyUI users install it: its requirements.txt (torch and gradio are never in it)
    subprocess.run(pip + ["-r", str(REPO / "requirements.txt")], check=True)
    stamp_file.write_text(stamp)
    return python()


if __name__ == "__main__":
    print(ensure_venv())
