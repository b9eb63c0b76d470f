"""Build the DUO tab under whatever gradio this Python has, serve it on 127.0.0.1 and call it over HTTP.

Run by tests/test_ui_gradio_versions.py inside environments holding gradio 3.41.2 (A1111) or 4.40.0 (Forge) and no
torch: the package is loaded the way the A1111 shim loads it, the tab is built, launched, its served config is
read back, and three events are called through gradio_client (each answers without torch: a bad output name, an
empty compare prompt, the adapter list refresh). Prints one JSON line; exit code 0 when every check passed.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write_fake_adapter(folder: Path, name: str = "duo_fake") -> Path:
    """A safetensors file with duo.* metadata and no tensor, written by hand (no torch needed)."""
    meta = {"__metadata__": {"duo.concept": "red", "duo.beta": "500", "duo.steps": "3", "duo.pairs": "2",
                             "duo.base_model": "testbed", "ss_network_dim": "4"}}
    header = json.dumps(meta).encode()
    header += b" " * (-len(header) % 8)
    path = folder / f"{name}.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve() -> int:
    """Serve the tab (one fake adapter listed, a fake training that only reports progress) until stdin closes;
    prints {"url": …} first."""
    blocks, lora_dir = build()
    port = free_port()
    blocks.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    print(json.dumps({"url": f"http://127.0.0.1:{port}/"}), flush=True)
    sys.stdin.read()
    shutil.rmtree(lora_dir, ignore_errors=True)  # os._exit skips every cleanup handler
    os._exit(0)  # gradio 3's queue threads can keep close() waiting; nothing here needs a clean shutdown


def fake_training_backend(lora_dir: Path):
    """The standalone backend with a torch-free stand-in for the training: progress, cancel, no file."""
    import time

    from duo_unlearn.extension.backends import StandaloneBackend
    from duo_unlearn.trainer.progress import ProgressEvent, report

    class FakeTraining(StandaloneBackend):
        def model_family(self, spec):  # the stand-in model below is no model: the tab would refuse it on the click
            return "sd1"

        def run_unlearn(self, cfg, progress=None):
            for i in range(600):
                report(progress, ProgressEvent("train", i + 1, 600, logs={"loss": 1.0 / (i + 1)}))
                time.sleep(0.1)
            return []

    model = lora_dir / "fake_model"
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    return FakeTraining(lora_dir, model=str(model))


def build():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import importlib.util

    spec = importlib.util.spec_from_file_location("duo_shim", ROOT / "scripts" / "duo_unlearn_tab.py")
    shim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shim)
    shim.load_package()
    from duo_unlearn.extension.app import queue
    from duo_unlearn.extension.backends import StandaloneBackend
    from duo_unlearn.extension.tab import create_blocks

    lora_dir = Path(tempfile.mkdtemp(prefix="duo-ui-check-"))
    write_fake_adapter(lora_dir)
    backend = fake_training_backend(lora_dir) if sys.argv[-1] == "serve" else StandaloneBackend(lora_dir)
    return queue(create_blocks(backend)), lora_dir


def main() -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import importlib.util

    import gradio as gr

    report = {"gradio": gr.__version__, "torch_importable": importlib.util.find_spec("torch") is not None}
    blocks, lora_dir = build()
    port = free_port()
    _, url, _ = blocks.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30) as r:
            config = json.load(r)
        ids = {c.get("props", {}).get("elem_id") for c in config.get("components", [])}
        wanted = {"duo_run", "duo_cancel", "duo_compare", "duo_out_name", "duo_unsafe", "duo_safe", "duo_sheet",
                  "duo_preview_img", "duo_base_img", "duo_adapted_img", "duo_adapter_0", "duo_weight_3"}
        report["missing_components"] = sorted(wanted - ids)
        dropdown = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "duo_adapter_0")
        choices = [ch[0] if isinstance(ch, (list, tuple)) else ch for ch in dropdown["props"]["choices"]]
        report["adapter_listed"] = "duo_fake" in choices

        from gradio_client import Client

        # gradio_client 0.5 (gradio 3) cannot deserialize an update dict sent to an Image: read raw outputs there.
        kwargs = {"serialize": False} if "serialize" in Client.__init__.__code__.co_varnames else {}
        client = Client(f"http://127.0.0.1:{port}/", **kwargs)
        unlearn_args = ["testbed", "testbed-red", "red", "", "", 2, 500, 2, 4, "../x", None, None, 0, 4, "", True,
                        False, "", "auto", "auto", "auto", 0, 0]
        out = client.predict(*unlearn_args, api_name="/duo_unlearn")
        report["bad_name_message"] = out[0]
        out = client.predict("testbed", "", "", 0, 2, 5.0, "duo_fake", 1.0, "(none)", 1, "(none)", 1, "(none)", 1,
                             api_name="/duo_compare")
        report["empty_prompt_message"] = out[-1]
        out = client.predict("testbed", api_name="/duo_refresh")
        report["refresh_table_lists_adapter"] = "duo_fake" in out[0] and "red" in out[0]
        report["family_line"] = out[1]
    finally:
        blocks.close()
        shutil.rmtree(lora_dir, ignore_errors=True)
    ok = (not report["missing_components"] and report["adapter_listed"]
          and "points into another folder" in report["bad_name_message"]
          and "prompt is empty" in report["empty_prompt_message"] and report["refresh_table_lists_adapter"]
          and "SD 1.x" in str(report["family_line"]))
    report["ok"] = bool(ok)
    print(json.dumps(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(serve() if sys.argv[-1] == "serve" else main())
