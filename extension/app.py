"""The standalone app: the same tab as in A1111/Forge, served by the current gradio on 127.0.0.1."""
from __future__ import annotations

import os
from pathlib import Path

from ..trainer.errors import UserError

DEFAULT_LORA_DIR = Path.home() / "duo-unlearn" / "loras"


def queue(blocks):
    """Enable the queue (generators need it on gradio 3) with room for a second click to be answered."""
    import gradio as gr

    if int(gr.__version__.split(".")[0]) >= 4:
        return blocks.queue(default_concurrency_limit=4)
    return blocks.queue(concurrency_count=4)


A1111_SCRIPT = Path(__file__).resolve().parents[1] / "javascript" / "duo_unlearn.js"


def add_page_script(blocks, path: Path = A1111_SCRIPT):
    """Run the file A1111 injects into its pages (hover help, copy <lora:…>) in the standalone page too.

    A page load event carrying only JavaScript works on every gradio the tab supports: gradio 3.41 calls the
    argument `_js`, 4.x and later `js`. (Blocks(head=…) is 4.x-only; gradio 3 has no page-level script hook.)"""
    import gradio as gr

    if not path.exists():
        return blocks
    js = "() => {\n" + path.read_text() + "\n}"
    key = "js" if int(gr.__version__.split(".")[0]) >= 4 else "_js"
    with blocks:
        blocks.load(None, None, None, **{key: js})
    return blocks


def make_app(lora_dir: str | Path | None = None, work_dir: str | Path | None = None, model: str = "testbed",
             device: str = "auto"):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("the UI needs gradio: pip install 'duo-unlearn[ui]' (or pip install gradio)") from None
    from .backends import StandaloneBackend
    from .tab import create_blocks

    for flag, folder in (("--lora-dir", lora_dir), ("--work-dir", work_dir)):
        if folder is not None and not str(folder).strip():  # else "" would quietly mean the default folder
            raise UserError(f"{flag} is empty: give a folder, or leave the flag out for the default")
    from ..trainer.models import detect_family, resolve_model_path

    detect_family(resolve_model_path(model))  # a mistyped --model is said now, not at the first click
    if work_dir is not None and Path(work_dir).expanduser().is_file():
        raise UserError(f"--work-dir {work_dir} is a file; pair datasets need a folder")
    lora_dir = Path(lora_dir or DEFAULT_LORA_DIR).expanduser()
    try:
        lora_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the LoRA folder {lora_dir}: {e.strerror or e}") from None
    backend = StandaloneBackend(lora_dir, work_dir, model=model, device=device)
    return queue(add_page_script(create_blocks(backend))), backend


def serve(host: str = "127.0.0.1", port: int | None = None, lora_dir: str | Path | None = None,
          work_dir: str | Path | None = None, model: str = "testbed", share: bool = False, block: bool = True):
    """Build and launch; with block=False returns (blocks, backend, url) and keeps serving in the background."""
    blocks, backend = make_app(lora_dir, work_dir, model)
    print(f"duo-unlearn ui: adapters are saved in {backend.lora_dir}, pairs in {backend.work_dir}", flush=True)
    try:
        _, url, _ = blocks.launch(server_name=host, server_port=port, share=share, inbrowser=False,
                                  prevent_thread_lock=not block, show_error=True, quiet=False)
    except OSError as e:  # gradio: "Cannot find empty port in range", or the address is not this machine's
        if "empty port" in str(e):  # gradio's own text goes on about launch() and environment variables
            raise UserError(f"no free port on {host}" + (f": {port} is taken by another program" if port else "")
                            + "; choose another --port") from None
        raise UserError(f"cannot serve on {host}:{port or 'auto'}: {e.strerror or e}") from None
    return blocks, backend, url
