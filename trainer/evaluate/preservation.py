"""Prior preservation: 1 − LPIPS between base and unlearned images made from the same prompts and seeds."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..errors import UserError

BACKBONES = ("pretrained", "random")
MIN_SIZE = 64  # alexnet's five stages need at least this many pixels a side


@dataclass
class Preservation:
    value: float  # 1 - mean LPIPS
    lpips_mean: float
    per_image: list[float]
    net: str
    backbone: str

    def as_dict(self) -> dict:
        return {"one_minus_lpips": self.value, "lpips_mean": self.lpips_mean, "net": self.net,
                "backbone": self.backbone, "n": len(self.per_image),
                "lpips_per_image": [round(v, 5) for v in self.per_image]}


def build_lpips(net: str = "alex", backbone: str = "pretrained", seed: int = 0):
    """The LPIPS metric. backbone="pretrained" is the real metric (ImageNet trunk, which torchvision downloads
    once into TORCH_HOME); "random" is a seeded random trunk with LPIPS' calibrated linear heads: no download,
    for tests and offline machines, and not comparable with published figures."""
    try:
        import lpips
    except ImportError:
        raise UserError("prior preservation needs the lpips package: pip install 'duo-unlearn[eval]'") from None
    if backbone not in BACKBONES:
        raise UserError(f"lpips backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
    import warnings

    import torch

    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torchvision's deprecation notes on lpips' calls
            torch.manual_seed(seed)
            model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=backbone == "random", verbose=False)
    except (OSError, RuntimeError) as e:  # URLError is an OSError: offline, first use
        raise UserError(f"could not get the LPIPS {net} backbone weights ({type(e).__name__}: {e}). They download "
                        "once from download.pytorch.org into TORCH_HOME; offline, copy them there, or use "
                        "--lpips-backbone random (figures then not comparable with published ones)") from None
    return model.eval().requires_grad_(False)


def _to_tensor(images: Sequence):
    import numpy as np
    import torch

    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0
    side = min(x.shape[-2:])
    if side < MIN_SIZE:  # tiny test-bed images: upsample (nearest keeps their flat colours and hard edges)
        factor = -(-MIN_SIZE // side)
        x = torch.nn.functional.interpolate(x, scale_factor=factor, mode="nearest")
    return x


def lpips_distances(metric, images_a: Sequence, images_b: Sequence, batch: int = 16) -> list[float]:
    import torch

    if len(images_a) != len(images_b):
        raise ValueError(f"LPIPS needs image pairs: {len(images_a)} vs {len(images_b)} images")
    out: list[float] = []
    device = next(metric.parameters()).device
    for i in range(0, len(images_a), batch):
        a, b = _to_tensor(images_a[i:i + batch]).to(device), _to_tensor(images_b[i:i + batch]).to(device)
        with torch.no_grad():
            out += metric(a, b).flatten().tolist()
    return out


def prior_preservation(metric, base_images: Sequence, images: Sequence, net: str = "alex",
                       backbone: str = "pretrained") -> Preservation:
    """1 − mean LPIPS(base_i, unlearned_i): 1 means the unlearned model draws these prompts exactly as before."""
    if not base_images:
        raise UserError("prior preservation of no images: the unrelated prompt set is empty")
    d = lpips_distances(metric, base_images, images)
    mean = sum(d) / len(d)
    return Preservation(1.0 - mean, mean, d, net, backbone)
