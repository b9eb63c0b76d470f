"""Same seed, adapter off vs on: the comparison artists make, saved as one PNG grid."""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from .atomic import write_atomic


def generate_images(pipe, prompts, seed: int, steps: int = 25, guidance: float = 7.5, negative_prompt=None):
    import torch

    gens = [torch.Generator("cpu").manual_seed(seed + i) for i in range(len(prompts))]
    return pipe(list(prompts), num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                negative_prompt=[negative_prompt] * len(prompts) if negative_prompt else None).images


def base_vs_adapter(pipe, unet, prompts, seed: int, steps: int = 25, guidance: float = 7.5):
    """(base images, adapted images) for the same prompts and seeds, toggling the peft adapter on the UNet."""
    unet.disable_adapters()
    try:
        base = generate_images(pipe, prompts, seed, steps, guidance)
    finally:
        unet.enable_adapters()
    return base, generate_images(pipe, prompts, seed, steps, guidance)


def grid(rows: list[list[Image.Image]], row_labels: list[str], col_labels: list[str] | None = None,
         cell: int = 128) -> Image.Image:
    label_w, label_h = 160, 18 if col_labels else 0
    ncols = max(len(r) for r in rows)
    sheet = Image.new("RGB", (label_w + ncols * cell, label_h + len(rows) * cell), "white")
    draw = ImageDraw.Draw(sheet)
    for j, text in enumerate(col_labels or []):
        draw.text((label_w + j * cell + 4, 3), text[:22], fill="black")
    for i, (row, text) in enumerate(zip(rows, row_labels)):
        y = label_h + i * cell
        draw.text((4, y + cell // 2 - 6), text[:26], fill="black")
        for j, im in enumerate(row):
            sheet.paste(im.convert("RGB").resize((cell, cell), Image.NEAREST), (label_w + j * cell, y))
    return sheet


def preview_path(adapter: str | Path) -> Path:
    """The base-vs-unlearned sheet training writes beside an adapter at the end."""
    adapter = Path(adapter)
    return adapter.with_name(adapter.stem + ".preview.png")


def refuse_existing_preview(adapter: str | Path, overwrite: bool) -> None:
    """The preview is written after training: a file of that name is refused before it, not replaced then."""
    from .errors import UserError

    path = preview_path(adapter)
    if path.is_dir():  # not even --overwrite replaces a folder
        raise UserError(f"{path} is a folder, and the preview is written under that name: rename the folder, "
                        "or leave the preview out")
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists; choose another --out, pass --overwrite to replace it, "
                        "or leave the preview out")


def save_png(image: Image.Image, path: Path, replace: bool = True) -> Path:
    """The PNG complete or absent, as every file the project writes (atomic.py)."""
    return write_atomic(path, lambda tmp: image.save(tmp, format="PNG"), replace=replace)


def comparison_sheet(base: list, adapted: list, prompts: list[str]) -> Image.Image:
    """Two columns per prompt row: base | unlearned."""
    return grid([[b, a] for b, a in zip(base, adapted)], list(prompts), ["base", "unlearned"])
