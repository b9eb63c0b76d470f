"""ComfyUI node registry. Node names are prefixed DUO so they never clash with core nodes."""
from .adapter_nodes import DUOAdapterInfo, DUOCompareImages, DUOLoraLoader, DUOLoraStack

NODE_CLASS_MAPPINGS = {
    "DUOLoraLoader": DUOLoraLoader,
    "DUOLoraStack": DUOLoraStack,
    "DUOAdapterInfo": DUOAdapterInfo,
    "DUOCompareImages": DUOCompareImages,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DUOLoraLoader": "DUO Load Adapter",
    "DUOLoraStack": "DUO Stack Adapters",
    "DUOAdapterInfo": "DUO Adapter Info",
    "DUOCompareImages": "DUO Compare (base | unlearned)",
}
