"""Separate virtual environments with the gradio versions the hosts pin, to build the tab under each.

A1111 pins gradio 3.41.2 (with fastapi 0.94.0 and httpx 0.24.1), Forge pins gradio 4.40.0; both break with
huggingface_hub >= 0.25 (HfFolder was removed). The environments hold gradio and its own dependencies only: the
check loads this repository as package `duo_unlearn` the way the A1111 shim does, builds the tab with no torch,
serves it on 127.0.0.1 and reads the served config back (tests/ui_build_check.py).

    python tests/ui_gradio_envs.py create            # both environments (a few minutes, needs PyPI)
    python tests/ui_gradio_envs.py check             # build the tab in each that exists
Environments live in $DUO_GRADIO_ENVS (default ~/.cache/duo-unlearn/gradio-envs).
"""
from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECK = HERE / "ui_build_check.py"
VERSIONS = {
    "3.41.2": ["gradio==3.41.2", "fastapi==0.94.0", "httpx==0.24.1", "huggingface_hub<0.25", "numpy<2",
               "pydantic<2"],
    "4.40.0": ["gradio==4.40.0", "fastapi==0.112.2", "starlette<0.39", "huggingface_hub<0.25", "numpy<2",
               "pydantic<2.11"],  # gradio_client 1.2 fails on pydantic 2.11's JSON schema (bool schemas)
}


def root() -> Path:
    return Path(os.environ.get("DUO_GRADIO_ENVS", Path.home() / ".cache" / "duo-unlearn" / "gradio-envs"))


def env_python(version: str) -> Path:
    return root() / f"gradio-{version}" / "bin" / "python"


def ready(version: str) -> bool:
    return (root() / f"gradio-{version}" / ".complete").exists()


def create(version: str) -> Path:
    folder = root() / f"gradio-{version}"
    if ready(version):
        return folder
    venv.EnvBuilder(with_pip=True, clear=True).create(folder)
    subprocess.run([str(env_python(version)), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    *VERSIONS[version]], check=True)
    (folder / ".complete").write_text(version + "\n")
    return folder


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", PYTHONNOUSERSITE="1")
    return env


def check(version: str, timeout: float = 240, python: str | None = None) -> subprocess.CompletedProcess:
    """Run the build check in that environment; returns the finished process (stdout has a JSON summary)."""
    return subprocess.run([python or str(env_python(version)), "-s", str(CHECK), version], capture_output=True,
                          text=True, timeout=timeout, env=_env(), cwd=str(HERE.parent))


def serve(version: str, python: str | None = None) -> tuple[subprocess.Popen, str]:
    """Serve the tab from that environment; returns (process, url). Close its stdin to stop it."""
    proc = subprocess.Popen([python or str(env_python(version)), "-s", str(CHECK), "serve"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=_env(), cwd=str(HERE.parent))
    for line in proc.stdout:
        if line.startswith('{"url"'):
            import json

            return proc, json.loads(line)["url"]
    proc.wait(10)
    raise RuntimeError(f"the tab did not start under gradio {version} (exit {proc.returncode})")


def main(argv: list[str]) -> int:
    what = argv[0] if argv else "check"
    versions = argv[1:] or list(VERSIONS)
    for v in versions:
        if what == "create":
            print(f"gradio {v}: {create(v)}", flush=True)
        elif what == "check":
            if not ready(v):
                print(f"gradio {v}: no environment (run: create {v})")
                continue
            r = check(v)
            print(f"gradio {v}: exit {r.returncode}\n{r.stdout}{r.stderr[-3000:]}")
        else:
            print(__doc__)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
