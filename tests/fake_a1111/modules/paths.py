import os

# modules/paths_internal.py: data_path (--data-dir) and models_path = data_path/models
data_path = os.environ.get("FAKE_WEBUI_DATA", os.getcwd())
models_path = os.path.join(data_path, "models")
