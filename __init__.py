"""duo-unlearn: DUO concept unlearning for Stable Diffusion.

ComfyUI imports this file as a custom-node package, so it stays light: node classes import torch-heavy code only
when a node runs.
"""
__version__ = "0.1.0"

try:  # inside ComfyUI the node package is importable; elsewhere this file is just the package root
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
except ImportError:  # pragma: no cover - nodes/ not usable outside a host is fine
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

WEB_DIRECTORY = "./javascript/comfyui"
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
