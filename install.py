"""Install what duo-unlearn needs inside a host, and only what is missing.

AUTOMATIC1111 / Forge run this file with `launch` importable; ComfyUI-Manager runs it with plain Python. Either way:
- a requirement already installed is left alone, even when older than asked (the host's pins win; a note says so);
- torch, torchvision, torchaudio, xformers and gradio are never installed or upgraded: they are the host's, and
  pip is given constraints pinning their installed versions so no dependency can replace them either.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from importlib import metadata

HERE = os.path.dirname(os.path.abspath(__file__))
REQUIREMENTS = os.path.join(HERE, "requirements.txt")
HOST_OWNED = ("torch", "torchvision", "torchaudio", "xformers", "gradio")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_requirements(path: str = REQUIREMENTS) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                out.append(line)
    return out


def _marker_applies(req: str) -> bool:
    if ";" not in req:
        return True
    marker = req.split(";", 1)[1].strip()
    try:
        from packaging.markers import Marker
    except ImportError:  # pragma: no cover - pip vendors packaging; hosts have it
        return True
    return Marker(marker).evaluate()


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _satisfied(req: str, version: str) -> bool:
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover
        return True
    return Requirement(req.split(";", 1)[0]).specifier.contains(version, prereleases=True)


def plan(requirements: list[str]) -> tuple[list[str], list[str]]:
    """(requirements to install, notes about installed-but-older ones); host-owned packages are skipped."""
    missing, notes = [], []
    for req in requirements:
        m = _NAME.match(req)
        if not m or not _marker_applies(req):
            continue
        name = m.group(1)
        if _norm(name) in HOST_OWNED:
            continue
        version = _installed(name)
        if version is None:
            missing.append(req.split(";", 1)[0].strip())
        elif not _satisfied(req, version):
            notes.append(f"duo-unlearn: {name} {version} is installed, {req} is asked for; leaving the host's "
                         "version alone (if training fails, upgrade it yourself)")
    return missing, notes


def constraints() -> str:
    """A constraints file pinning the host-owned packages that are installed to their current versions."""
    lines = [f"{name}=={v}" for name in HOST_OWNED if (v := _installed(name))]
    fd, path = tempfile.mkstemp(prefix="duo-unlearn-constraints-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def main() -> int:
    missing, notes = plan(read_requirements(REQUIREMENTS))
    for note in notes:
        print(note)
    if not missing:
        return 0
    pins = constraints()
    try:
        try:
            import launch  # AUTOMATIC1111 / Forge
        except ImportError:
            launch = None
        for req in missing:
            if launch is not None:
                launch.run_pip(f'install -c "{pins}" "{req}"', f"duo-unlearn requirement: {req}")
            else:
                subprocess.run([sys.executable, "-m", "pip", "install", "-c", pins, req], check=True)
    finally:
        os.unlink(pins)
    return 0


if __name__ == "__main__" or "launch" in sys.modules:
    main()
