"""The Gradio tab ("Unlearn concept", "Compare adapters") shared by the standalone app and A1111/Forge.

- tab.py: `build_tab(backend)` / `create_blocks(backend)`, and TabController (the behaviour, testable without gradio)
- backends.py: StandaloneBackend (diffusers) and A1111Backend (the web UI's own model moves and txt2img)
- jobs.py: one job at a time in a background thread, with progress, ETA and cancel
- names.py: output names that can only land inside the LoRA folder
- app.py: `duo-unlearn ui` (127.0.0.1 unless told otherwise)
A1111/Forge load it through scripts/duo_unlearn_tab.py. Nothing here imports torch or gradio at import time.
"""
