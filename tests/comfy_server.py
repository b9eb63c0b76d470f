"""A real ComfyUI server for the tests: a copy of the source tree, this repo as a custom node, a tiny SD 1.5 model.

The server runs in the ComfyUI test venv (tests/comfy_env.py) with --cpu on 127.0.0.1; tests talk to it over HTTP
as the front-end does.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from comfy_env import REPO, ensure_venv

PACK = "duo_unlearn"  # the folder name under custom_nodes/: ComfyUI names the pack (and /extensions/<name>) after it
CKPT = "tiny_sd15.safetensors"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, source: Path, root: Path):
        self.python = ensure_venv()
        self.root = root / "ComfyUI"
        # copy, never run in place: ComfyUI writes into its own tree (user/, output/, temp/, databases)
        shutil.copytree(source, self.root, ignore=shutil.ignore_patterns(".git", "tests", "tests-unit"))
        models = self.root / "models"
        for folder in (self.root / "custom_nodes", models / "checkpoints", models / "loras", models / "diffusers"):
            folder.mkdir(parents=True, exist_ok=True)  # a bare source tree may lack the empty ones
        (self.root / "custom_nodes" / PACK).symlink_to(REPO, target_is_directory=True)
        subprocess.run([str(self.python), str(REPO / "tests" / "comfy_tiny_sd15.py"), str(self.root),
                        str(models / "checkpoints")], check=True, env=self._env())
        shutil.move(str(models / "checkpoints" / "tiny_sd15_diffusers"), str(models / "diffusers" / "tiny_sd15"))
        self.loras = models / "loras"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "comfyui.log"
        self.proc = None

    @staticmethod
    def _env() -> dict:
        env = dict(os.environ, OMP_NUM_THREADS="2", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   PYTHONUNBUFFERED="1")
        env.pop("PYTHONPATH", None)
        return env

    def start(self, timeout: float = 180) -> "ComfyServer":
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen([str(self.python), "main.py", "--cpu", "--listen", "127.0.0.1", "--port",
                                      str(self.port), "--disable-auto-launch"], cwd=self.root, env=self._env(),
                                     stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                self.get("/system_stats")
                return self
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"ComfyUI did not answer within {timeout}s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(self, path: str, data: dict | None = None) -> tuple[int, bytes]:
        body = json.dumps(data).encode() if data is not None else None
        req = urllib.request.Request(self.url + path, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get(self, path: str):
        status, body = self.request(path)
        if status != 200:
            raise AssertionError(f"GET {path}: {status} {body[:500]!r}")
        return json.loads(body)

    def run(self, prompt: dict, timeout: float = 300) -> dict:
        """Queue an API-format graph and wait for its history entry; raise with ComfyUI's error if it failed."""
        status, body = self.request("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
        if status != 200:
            raise AssertionError(f"prompt refused: {body.decode(errors='replace')[:2000]}")
        prompt_id = json.loads(body)["prompt_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"]["status_str"] != "success":
                    raise AssertionError(f"graph failed: {json.dumps(entry['status']['messages'])[:3000]}")
                return entry
            time.sleep(0.5)
        raise TimeoutError(f"graph still running after {timeout}s")
