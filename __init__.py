"""duo-unlearn: DUO concept unlearning for Stable Diffusion.

ComfyUI imports this file as a custom-node package, so it stays light: node classes import torch-heavy code only
when a node runs.
"""
__version__ = "0.1.0"

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # light: host modules load when a node runs

# ComfyUI serves this folder to its front-end. A subfolder: A1111 injects every top-level javascript/*.js.
WEB_DIRECTORY = "./javascript/comfyui"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
