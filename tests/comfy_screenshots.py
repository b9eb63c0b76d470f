"""Screenshots of the pack's front-end in a real ComfyUI, driven by headless Debian Chromium (Playwright).

    python tests/comfy_screenshots.py [--docs]

Starts ComfyUI from a copy of COMFYUI_DIR (or ../shared/comfyui-src) on 127.0.0.1 --cpu with this repository in
custom_nodes/ (tests/comfy_server.py), trains a tiny DUO adapter there through the API, then in the browser:
  workflow.png      the example workflow duo_unlearn_then_compare (--docs: also written to docs/comfyui_workflow.png)
  loader_facts.png  DUO Load Adapter's facts, shown as soon as the LoRA is chosen (before anything runs)
  adapter_info.png  DUO Adapter Info's text on the node after the graph ran
  compare_slider.png  DUO Compare's before/after slider
into tests/artifacts/comfyui/ (git-ignored). Each step checks what it shows (the facts' text, the slider's images
loaded) and exits non-zero if the front-end did not do it.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from comfy_env import REPO, comfyui_dir  # noqa: E402

ARTIFACTS = REPO / "tests" / "artifacts" / "comfyui"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ADAPTER = "duo_cat.safetensors"

APP = "window.comfyAPI.app.app"
FIT = f"""(pad) => {{
  const app = {APP};
  const nodes = app.graph._nodes;
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const n of nodes) {{
    x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 30);
    x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
  }}
  app.canvas.ds.fitToBounds([x0 - pad, y0 - pad, x1 - x0 + 2 * pad, y1 - y0 + 2 * pad]);
  app.canvas.setDirty(true, true);
}}"""


def graph_loader(ckpt: str) -> dict:
    """API-format graph: a checkpoint into DUO Load Adapter (facts on choosing), Adapter Info, and a Compare fed by
    two samplers at one seed (base and with the adapter)."""
    sampler = {"seed": 7, "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "DUOLoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": ADAPTER,
                                                        "strength_model": 40.0, "strength_clip": 1.0}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a cat"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["3", 0], "negative": ["4", 0],
                                                   "latent_image": ["5", 0], **sampler}},
        "7": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "positive": ["3", 0], "negative": ["4", 0],
                                                   "latent_image": ["5", 0], **sampler}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "10": {"class_type": "DUOCompareImages", "inputs": {"base": ["8", 0], "unlearned": ["9", 0]}},
        "11": {"class_type": "DUOAdapterInfo", "inputs": {"lora_name": ADAPTER}},
    }


def train_adapter(server) -> None:
    """A DUO adapter for the server's tiny SD 1.5 checkpoint, in its models/loras, made here with the trainer (pairs
    with 2 sampling steps: the graph path, DUO Unlearn, is what test_comfy_real.py checks; here it only costs time)."""
    from duo_unlearn.trainer.config import LoraConfig, TrainConfig
    from duo_unlearn.trainer.models import load_model
    from duo_unlearn.trainer.pairs import PairConfig, generate_pairs
    from duo_unlearn.trainer.train import train

    ckpt = server.root / "models" / "checkpoints" / "tiny_sd15.safetensors"
    configs = server.root / "models" / "diffusers" / "tiny_sd15"
    model = load_model(ckpt, configs)
    pairs = server.root / "output" / "duo-unlearn" / "duo_cat_pairs"
    generate_pairs(PairConfig(out=str(pairs), model=str(ckpt), config_dir=str(configs), unsafe_prompts=("a cat",),
                              safe_prompts=("a dog",), num_pairs=1, sample_steps=2, detector="none"), model=model)
    train(TrainConfig(pairs=str(pairs), model=str(ckpt), config_dir=str(configs), out=str(server.loras / ADAPTER),
                      steps=2, concept="cat", lora=LoraConfig(rank=4, alpha=4.0), device="cpu"), model=model)


def close_dialogs(page) -> None:
    """The first-run template browser and toasts cover the canvas: close them."""
    for _ in range(5):
        closers = page.locator(".p-dialog .p-dialog-close-button, .p-dialog-header-close, .p-toast-close-button")
        if closers.count() == 0:
            return
        try:
            closers.first.click(timeout=2000)
        except Exception:
            page.keyboard.press("Escape")
        time.sleep(0.5)


def wait_for(page, js: str, arg=None, timeout: float = 60.0, what: str = ""):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = page.evaluate(js, arg)
        if value:
            return value
        time.sleep(0.3)
    raise TimeoutError(f"the page never showed {what or js}")


def node_shot(page, node_ids: list[int], path: Path, pad: int = 40) -> None:
    """Centre the view on some nodes, then capture the canvas."""
    page.evaluate(f"""([ids, pad]) => {{
      const app = {APP};
      const nodes = ids.map((i) => app.graph.getNodeById(i));
      let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
      for (const n of nodes) {{
        x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 30);
        x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
      }}
      app.canvas.ds.fitToBounds([x0 - pad, y0 - pad, x1 - x0 + 2 * pad, y1 - y0 + 2 * pad]);
      app.canvas.setDirty(true, true);
    }}""", [node_ids, pad])
    time.sleep(0.8)  # DOM widgets follow the canvas on the next frames
    close_dialogs(page)
    page.screenshot(path=str(path))


def facts_text(page, node_id: int) -> str:
    return page.evaluate(f"""(id) => {{
      const n = {APP}.graph.getNodeById(id);
      const w = n?.widgets?.find((x) => x.name === "duo_facts");
      return w?.element?.value || "";
    }}""", node_id)


def main(argv: list[str]) -> int:
    from playwright.sync_api import sync_playwright

    from comfy_server import ComfyServer

    source = comfyui_dir()
    if source is None:
        print("no ComfyUI source tree (COMFYUI_DIR or ../shared/comfyui-src)")
        return 2
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="duo_comfy_shots_"))
    server = ComfyServer(source, scratch).start()
    report = {}
    try:
        started = time.time()
        train_adapter(server)
        report["train_seconds"] = round(time.time() - started, 1)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            # no first-run template browser over the canvas
            server.request("/settings/Comfy.TutorialCompleted", True)
            server.request("/settings/Comfy.Minimap.Visible", False)
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            logs = []
            page.on("console", lambda m: logs.append(f"{m.type}: {m.text}"))
            page.goto(server.url, wait_until="domcontentloaded")
            wait_for(page, f"() => !!({APP}?.graph && window.LiteGraph?.registered_node_types?.DUOUnlearn)",
                     timeout=120, what="ComfyUI's app with the DUO nodes registered")
            time.sleep(2)
            close_dialogs(page)

            # (a) the example workflow
            workflow = json.loads((REPO / "example_workflows" / "duo_unlearn_then_compare.json").read_text())
            page.evaluate(f"(wf) => {APP}.loadGraphData(wf, true, false)", workflow)
            time.sleep(1.5)
            close_dialogs(page)
            # LiteGraph draws widget text only from ~60 % zoom: a wide view for the whole graph, then back
            page.set_viewport_size({"width": 2100, "height": 1150})
            time.sleep(1.0)
            page.evaluate(FIT, 20)
            time.sleep(1.0)
            shot = ARTIFACTS / "workflow.png"
            page.screenshot(path=str(shot))
            report["workflow"] = str(shot)
            if "--docs" in argv:
                docs = REPO / "docs"
                docs.mkdir(exist_ok=True)
                page.screenshot(path=str(docs / "comfyui_workflow.png"))
                report["docs"] = f"{docs / 'comfyui_workflow.png'} ({(docs / 'comfyui_workflow.png').stat().st_size} B)"
            report["workflow_zoom"] = page.evaluate(f"() => {APP}.canvas.ds.scale")
            page.set_viewport_size({"width": 1600, "height": 1000})

            # (b) facts on the loader as soon as the LoRA is chosen: nothing has run yet
            page.evaluate(f"(g) => {APP}.loadApiJson(g, 'duo_screens')", graph_loader("tiny_sd15.safetensors"))
            time.sleep(1.5)
            text = wait_for(page, f"() => {{ const n = {APP}.graph.getNodeById(2); "
                                  "const w = n?.widgets?.find((x) => x.name === 'duo_facts'); "
                                  "return (w?.element?.value || '').includes('concept: cat') && w.element.value; }",
                            what="the loader's facts")
            report["loader_facts"] = text
            assert "matches tiny_sd15.safetensors: yes" in text, text
            node_shot(page, [1, 2], ARTIFACTS / "loader_facts.png")

            # (c) + (d): run the graph from the browser; Adapter Info's text and the Compare slider appear
            page.evaluate(f"() => {APP}.queuePrompt(0, 1)")
            wait_for(page, f"""() => {{
              const n = {APP}.graph.getNodeById(10);
              const w = n?.widgets?.find((x) => x.name === "duo_slider");
              return !!(w && w.base.complete && w.base.naturalWidth && w.after.complete && w.after.naturalWidth);
            }}""", timeout=240, what="the compare slider with both images loaded")
            info = wait_for(page, f"() => {{ const n = {APP}.graph.getNodeById(11); "
                                  "const w = n?.widgets?.find((x) => x.name === 'duo_facts'); "
                                  "return (w?.element?.value || '').includes('concept: cat') && w.element.value; }",
                            what="Adapter Info's text")
            report["adapter_info"] = info
            node_shot(page, [11], ARTIFACTS / "adapter_info.png", pad=60)
            page.evaluate(f"""() => {{
              const n = {APP}.graph.getNodeById(10);
              n.size = [420, 420];
              const w = n.widgets.find((x) => x.name === "duo_slider");
              w.range.value = "35"; w.range.dispatchEvent(new Event("input"));
            }}""")
            node_shot(page, [10], ARTIFACTS / "compare_slider.png", pad=60)
            report["slider_clip"] = page.evaluate(f"() => {APP}.graph.getNodeById(10).widgets"
                                                  ".find((x) => x.name === 'duo_slider').after.style.clipPath")
            report["console_errors"] = [l for l in logs if l.startswith("error") and "duo" in l.lower()]
            browser.close()
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
