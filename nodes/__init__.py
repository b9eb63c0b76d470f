"""ComfyUI node registry. Node names are prefixed DUO so they never clash with core nodes."""
from .adapter_nodes import DUOAdapterInfo, DUOApplyAdapter, DUOCompareImages, DUOLoraLoader, DUOLoraStack
from .routes import register_routes
from .unlearn_node import DUOUnlearn

NODE_CLASS_MAPPINGS = {
    "DUOUnlearn": DUOUnlearn,
    "DUOLoraLoader": DUOLoraLoader,
    "DUOApplyAdapter": DUOApplyAdapter,
    "DUOLoraStack": DUOLoraStack,
    "DUOAdapterInfo": DUOAdapterInfo,
    "DUOCompareImages": DUOCompareImages,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DUOUnlearn": "DUO Unlearn (pairs + training)",
    "DUOLoraLoader": "DUO Load Adapter",
    "DUOApplyAdapter": "DUO Apply Trained Adapter",
    "DUOLoraStack": "DUO Stack Adapters",
    "DUOAdapterInfo": "DUO Adapter Info",
    "DUOCompareImages": "DUO Compare (base | unlearned)",
}

register_routes()  # only inside a running ComfyUI server; a no-op anywhere else
