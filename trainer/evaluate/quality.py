"""Image quality per method, the paper's Tables 1, 2 and 4: FID against a reference set, CLIP score against prompts.

FID is torchmetrics' FrechetInceptionDistance on one of two feature networks:
  inception  torch-fidelity's Inception v3, the network of published FIDs. Its weights download once into
             TORCH_HOME, or come from a file the user has (--fid-inception-weights).
  testbed    the test bed's own small network (trainer/testbed/features.py); the figure is a test-bed FID, not
             comparable with published FID, and labelled so in the report.
The reference set is a folder of real images (--fid-reference, e.g. MS-COCO val2014/2017), else for `testbed` the
renders of the same unrelated prompts by shapes.py (what the test bed was trained to draw), else the base model's
own images of the same prompts: FID then measures how far a method moved from the base, not realism.

CLIP score is 100 · max(cos(image, prompt), 0) per image, averaged (torchmetrics' definition), with a CLIP model
read from a local folder only: nothing downloads at evaluation time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import UserError

FID_FEATURES = ("inception", "testbed")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's name in TORCH_HOME/hub/checkpoints
INCEPTION_LABEL = "FID (Inception v3 pool features, torch-fidelity weights)"
REFERENCE_BATCH = 32  # reference images are read and featurised this many at a time, never all held at once


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def reference_files(folder: str | Path) -> list[Path]:
    """The image files directly in `folder` (not its subfolders), sorted; hidden and non-image files are ignored.
    Each is opened (header only) now, so a broken one fails before anything is generated."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    if not folder.exists():
        raise UserError(f"FID reference folder not found: {folder}")
    if not folder.is_dir():
        raise UserError(f"--fid-reference must be a folder of images, and {folder} is a file")
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    inside = folder.resolve()
    elsewhere = [p.name for p in files if inside not in p.resolve().parents]
    if elsewhere:  # read only what the user chose, as pair datasets do
        raise UserError(f"FID reference {elsewhere[0]} links to a file outside {folder}; copy the image in instead")
    if not files:
        raise UserError(f"FID reference folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                        f"it has {len(entries)} other entr{'y' if len(entries) == 1 else 'ies'}")
    for p in files:
        try:
            with Image.open(p):
                pass
        except Image.DecompressionBombError:
            raise UserError(f"FID reference {p} is over Pillow's safety limit of {Image.MAX_IMAGE_PIXELS} pixels; "
                            "give images of a usual size") from None
        except (UnidentifiedImageError, OSError) as e:
            raise UserError(f"FID reference {p} is not a readable image ({_one_line(e)})") from None
    if len(files) < 2:
        raise UserError(f"FID needs at least 2 reference images; {folder} has {len(files)}")
    return files


def _load_reference(path: Path, size: tuple[int, int]):
    """RGB, centre-cropped to the generated images' aspect ratio and resized to their size (bicubic), as FID
    evaluations of Stable Diffusion on MS-COCO prepare the real images."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            return ImageOps.fit(im.convert("RGB"), size, Image.BICUBIC)
    except OSError as e:
        raise UserError(f"FID reference {path} is not a readable image ({_one_line(e)})") from None


def _uint8(images: Sequence):
    import numpy as np
    import torch

    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def build_fid(features: str, inception_weights: str | None = None, device=None, testbed_weights: str | None = None):
    """torchmetrics FID whose reference statistics stay across reset(): set once, then one reset per method.
    testbed_weights: another copy of the test bed's feature network (its retraining script measures its own)."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError:
        raise UserError("FID needs the torchmetrics package: pip install 'duo-unlearn[eval]'") from None
    if features == "testbed":
        from ..testbed.features import WEIGHTS, feature_extractor, load_net

        metric = FrechetInceptionDistance(feature=feature_extractor(load_net(testbed_weights or WEIGHTS)),
                                          reset_real_features=False)
    elif features == "inception":
        try:
            import torch_fidelity  # noqa: F401
        except ImportError:
            raise UserError("--fid-features inception needs torch-fidelity (its Inception v3 is the published "
                            "FID's network): pip install torch-fidelity") from None
        if inception_weights:
            _check_inception_file(inception_weights)
        try:
            metric = FrechetInceptionDistance(feature=2048, reset_real_features=False,
                                              feature_extractor_weights_path=inception_weights)
        except (OSError, RuntimeError) as e:  # URLError is an OSError: offline, first use
            raise UserError(f"could not get the Inception v3 FID weights ({_one_line(e)}); they download once "
                            f"into TORCH_HOME/hub/checkpoints/{INCEPTION_FILE}: offline, copy that file there or "
                            "pass it with --fid-inception-weights") from None
    else:
        raise UserError(f"fid_features must be one of {', '.join(FID_FEATURES)}, got {features!r}")
    return metric.to(device) if device is not None else metric


def _check_inception_file(path: str) -> None:
    """torch-fidelity reads a given weights file with torch.load(weights_only=False), which runs any pickled code:
    the file must first load as plain tensors (weights_only=True), so only a state dict ever reaches it."""
    import torch

    if not Path(path).is_file():
        raise UserError(f"Inception weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle raises many kinds; all mean "not a plain state dict"
        raise UserError(f"{path} is not a plain Inception v3 state dict ({_one_line(e)})") from None
    if not (isinstance(state, dict) and "Mixed_7c.branch_pool.conv.weight" in state):
        raise UserError(f"{path} is not torch-fidelity's Inception v3 weights ({INCEPTION_FILE})")


def load_clip(path: str, device=None):
    """(model, processor) from a local folder (config, weights, tokenizer and image processor files, e.g. a copy
    of openai/clip-vit-large-patch14): never a hub name, never a download."""
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"--clip-model must be a local folder with a CLIP model and its processor; "
                        f"{folder} is {'a file' if folder.exists() else 'not found'}")
    from transformers import CLIPModel, CLIPProcessor

    try:
        model, loading = CLIPModel.from_pretrained(str(folder), local_files_only=True, output_loading_info=True)
        processor = CLIPProcessor.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"could not load a CLIP model and processor from {folder} ({_one_line(e)})") from None
    # transformers starts any weight the folder lacks from random numbers, with a note: a score from those is noise
    missing = [k for k in loading.get("missing_keys", []) if not k.endswith("position_ids")]
    if missing:
        raise UserError(f"{folder} is not a whole CLIP model: {len(missing)} weights are missing (e.g. {missing[0]}); "
                        "give a folder with both the text and the vision model's weights")
    crop = getattr(processor.image_processor, "crop_size", None)
    side = crop.get("height") if isinstance(crop, dict) else getattr(crop, "height", crop)  # transformers 4 / 5
    if side and side != model.config.vision_config.image_size:
        raise UserError(f"{folder}: its image processor makes {side} px images and its model reads "
                        f"{model.config.vision_config.image_size} px ones; the two files are of different models")
    model = model.eval().requires_grad_(False)
    return (model.to(device) if device is not None else model), processor


def _embedding(out):
    # transformers 4 returns the projected embedding; 5 returns an output whose pooler_output holds it
    return out if hasattr(out, "norm") else out.pooler_output


def clip_cosines(model, processor, images: Sequence, prompts: Sequence[str], batch: int = 32) -> list[float]:
    """cos(image_i, prompt_i) in CLIP's joint space. Prompts longer than the text encoder's window are cut (with
    their end token kept by the tokenizer), as every CLIP score implementation must."""
    import torch

    if len(images) != len(prompts):
        raise ValueError(f"CLIP score needs one prompt per image: {len(images)} images, {len(prompts)} prompts")
    device = next(model.parameters()).device
    max_len = model.config.text_config.max_position_embeddings
    out: list[float] = []
    for i in range(0, len(images), batch):
        ims = [im.convert("RGB") for im in images[i:i + batch]]
        text = processor.tokenizer(list(prompts[i:i + batch]), padding=True, truncation=True, max_length=max_len,
                                   return_tensors="pt")
        pixels = processor.image_processor(images=ims, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            t = _embedding(model.get_text_features(input_ids=text["input_ids"].to(device),
                                                   attention_mask=text["attention_mask"].to(device)))
            v = _embedding(model.get_image_features(pixel_values=pixels.to(device)))
        out += torch.nn.functional.cosine_similarity(t.float(), v.float(), dim=-1).tolist()
    return out


@dataclass
class Quality:
    """The asked-for quality metrics of one evaluation run: set the reference once, then measure each method."""
    fid_features: str | None = None
    fid_reference: str | None = None
    inception_weights: str | None = None
    clip_model: str | None = None
    batch: int = 32
    device: object = None
    testbed_weights: str | None = None  # None: the committed trainer/testbed/features.safetensors
    fid: object = None
    clip: tuple | None = None
    reference: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.fid_features and self.fid is None:  # a given metric (a test's stand-in network) is kept
            self.fid = build_fid(self.fid_features, self.inception_weights, self.device, self.testbed_weights)
        if self.clip_model:
            self.clip = load_clip(self.clip_model, self.device)

    @property
    def fid_label(self) -> str:
        from ..testbed.features import LABEL

        return LABEL if self.fid_features == "testbed" else INCEPTION_LABEL

    def add(self, images, real: bool) -> None:
        for i in range(0, len(images), self.batch):
            self.fid.update(_uint8(images[i:i + self.batch]).to(self.fid.device), real=real)

    def set_reference(self, base_images: Sequence, prompts_per_image: Sequence[str], seed: int = 0) -> None:
        """The FID reference statistics: the folder's images, else test-bed renders, else the base's images."""
        if self.fid is None:
            return
        if self.fid_reference:
            files = reference_files(self.fid_reference)
            size = base_images[0].size
            for i in range(0, len(files), REFERENCE_BATCH):
                self.add([_load_reference(p, size) for p in files[i:i + REFERENCE_BATCH]], real=True)
            self.reference = {"kind": "folder", "path": str(self.fid_reference), "n": len(files),
                              "prepared": f"RGB, centre-cropped and resized (bicubic) to {size[0]}x{size[1]}"}
        elif self.fid_features == "testbed":
            from ..testbed.features import RENDERS_PER_PROMPT, reference_renders

            prompts = list(dict.fromkeys(prompts_per_image))
            renders = reference_renders(prompts, RENDERS_PER_PROMPT, seed)
            self.add(renders, real=True)
            self.reference = {"kind": "test-bed renders", "n": len(renders), "per_prompt": RENDERS_PER_PROMPT,
                              "seed": seed, "prepared": "trainer/testbed/shapes.py render() of each unrelated "
                              "prompt, random place and size, ±8 RGB jitter as in the training data"}
        else:
            self.add(base_images, real=True)
            self.reference = {"kind": "base model", "n": len(base_images),
                              "prepared": "the base model's images of the same prompts and seeds: FID is the "
                                          "distance from the base model, not realism"}

    def few_images(self, n: int) -> str | None:
        """A warning when n images cannot estimate the feature covariance FID compares, else None."""
        dims = self.fid.real_features_cov_sum.shape[0]
        if n > dims:
            return None
        # with n ≤ d the sample covariance has rank < d: the trace term is dominated by which directions the few
        # images happen to span, so FIDs of the same model at other seeds differ by as much as methods do
        return (f"FID from {n} images per method against {dims} features: too few to estimate the feature "
                f"covariance, so differences between methods are mostly noise (more than {dims} images needed: raise "
                "--images-per-prompt or give more unrelated prompts)")

    def measure(self, images: Sequence, prompts_per_image: Sequence[str]) -> dict:
        """{"fid": {...}, "clip_score": {...}} for one method's images of the unrelated prompts."""
        out: dict = {}
        if self.fid is not None:
            self.fid.reset()  # the reference statistics stay (reset_real_features=False)
            self.add(images, real=False)
            value = float(self.fid.compute())
            out["fid"] = {"value": max(0.0, value), "n": len(images), "features": self.fid_features,
                          "reference": self.reference["kind"], "label": self.fid_label}
            caveat = self.few_images(len(images))
            if caveat:
                out["fid"]["caveat"] = caveat
        if self.clip is not None:
            cos = clip_cosines(*self.clip, images, prompts_per_image, self.batch)
            scores = [100.0 * max(c, 0.0) for c in cos]
            out["clip_score"] = {"value": sum(scores) / len(scores), "cosine_mean": sum(cos) / len(cos),
                                 "n": len(cos), "per_image": [round(s, 4) for s in scores]}
        return out

    def settings(self) -> dict:
        s: dict = {}
        if self.fid is not None:
            s["fid"] = {"features": self.fid_features, "label": self.fid_label, "reference": self.reference,
                        "inception_weights": self.inception_weights, "implementation": "torchmetrics "
                        "FrechetInceptionDistance; images of the unrelated prompts, images_per_prompt each"}
        if self.clip is not None:
            s["clip_score"] = {"model": self.clip_model, "definition": "100 * max(cos(image, prompt), 0), mean "
                               "over images (torchmetrics' CLIPScore), each image against its own prompt"}
        return s


def check(fid_features: str | None, fid_reference: str | None, clip_model: str | None, unrelated: list[str],
          images_per_prompt: int, inception_weights: str | None = None) -> None:
    """Input checks that need no model, run by plan() so bad input fails before anything loads."""
    if inception_weights and not Path(inception_weights).is_file():
        # before the LPIPS backbone or torch-fidelity are looked for, whose own errors would name another cause
        raise UserError(f"--fid-inception-weights: Inception weights file not found: {inception_weights}")
    if fid_features:
        if len(unrelated) * images_per_prompt < 2:
            raise UserError("FID needs at least 2 images per method: raise --images-per-prompt or give more "
                            "unrelated prompts")
        if fid_reference:
            reference_files(fid_reference)
        elif fid_features == "testbed":
            from ..testbed.features import parse_prompt

            bad = [p for p in unrelated if parse_prompt(p) is None]
            if bad:
                raise UserError(f"the test-bed FID reference renders test-bed prompts, and {bad[0]!r} is not one "
                                "(e.g. 'a blue circle on a white background'); give --fid-reference DIR")
    if clip_model and not Path(clip_model).is_dir():
        raise UserError(f"--clip-model must be a local folder with a CLIP model and its processor; {clip_model} "
                        f"is {'a file' if Path(clip_model).exists() else 'not found'}")
