"""A separate venv for real-ComfyUI tests, so ComfyUI's requirements never touch the project's environment.

Cached under tests/.venvs/comfyui (git-ignored) and rebuilt only when the requirement list below changes. It holds
what ComfyUI imports at start-up and the pack's own requirements.txt, as a user gets after cloning into custom_nodes/
and running pip there. torch and torchvision, which a ComfyUI user has before any pack, are this interpreter's: linked,
with what they need, into tests/.venvs/comfyui-torch, which the venv reads through a .pth file after its own
site-packages. A fresh copy of the CUDA build is 5.5 GB and about a minute of a clean clone's CI; pip never removes a
linked package (it lies outside the venv), it installs a different version in the venv, ahead of the link.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / "tests" / ".venvs" / "comfyui"
HOST_TORCH = REPO / "tests" / ".venvs" / "comfyui-torch"
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
    linked = " ".join(sorted(f"{d.metadata['Name']}=={d.version}" for d in _torch_closure()))
    return hashlib.sha256(("\n".join(COMFY_REQUIREMENTS) + pack_reqs + sys.version + linked).encode()).hexdigest()[:16]


@functools.cache  # read for the stamp and again for the links: one metadata walk per run
def _torch_closure() -> list:
    """The installed distributions torch and torchvision need, themselves included. Extras count where a requirement
    names them: torch's CUDA build needs cuda-toolkit[cudart,cufft,…], whose parts are its extras' requirements."""
    from importlib import metadata

    from packaging.requirements import Requirement

    found, seen, todo = {}, set(), [("torch", ""), ("torchvision", "")]
    while todo:
        name, extra = todo.pop()
        name = re.sub(r"[-_.]+", "-", name).lower()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        try:
            dist = found.get(name) or metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found[name] = dist
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                todo += [(req.name, "")] + [(req.name, e) for e in req.extras]
    return list(found.values())


def _link_host_torch(site: Path) -> None:
    """Each top-level file and folder of the torch closure linked into HOST_TORCH; a .pth in `site` reads it."""
    if HOST_TORCH.exists():
        shutil.rmtree(HOST_TORCH)
    HOST_TORCH.mkdir(parents=True)
    for dist in _torch_closure():
        root = Path(dist.locate_file(""))
        for top in {Path(f).parts[0] for f in dist.files or []}:
            if top not in ("..", "__pycache__") and (root / top).exists() and not (HOST_TORCH / top).exists():
                (HOST_TORCH / top).symlink_to(root / top)
    (site / "duo_host_torch.pth").write_text(f"{HOST_TORCH}\n")


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
    site = subprocess.run([str(python()), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    _link_host_torch(Path(site))
    # no .pyc up front: ComfyUI imports a small part of what is installed, and Python compiles that on first import
    pip = [str(python()), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile"]
    subprocess.run(pip + COMFY_REQUIREMENTS, check=True)
    # the pack as ComfyUI users install it: its requirements.txt (torch and gradio are never in it)
    subprocess.run(pip + ["-r", str(REPO / "requirements.txt")], check=True)
    stamp_file.write_text(stamp)
    return python()


if __name__ == "__main__":
    print(ensure_venv())
