"""Which of an adapter's blocks remove red, and which change the rest? The adapter with one block left out, or alone.

    python benchmarks/block_ablation_testbed.py runs/efficacy_testbed/duo_preset.safetensors
    python benchmarks/block_ablation_testbed.py ADAPTER --modes without --seed 5000 --json blocks.json
    python benchmarks/block_ablation_testbed.py ADAPTER --modes weights --weights 0.25,0.5,0.75,1.25
    python benchmarks/block_ablation_testbed.py ADAPTER --modes rotated --rotation-seeds 0,1,2

A block is one attention or ResNet block of the UNet (`down_blocks_1_attentions_0`, `mid_block_resnets_1`, ...),
read off the adapter's kohya keys. For each block the adapter is written again without that block's LoRA
("without") and with only it ("only"), and every copy is read as the efficacy table reads an adapter (`efficacy_testbed.
close_and_agreement`, the table's seeds unless --seed): red erased on the red prompts, orange ÷ base, background,
shape and other colours kept on the other colours' prompts, and the red prompts' background and shape kept. The
adapter was trained whole, so a block's share here is what it does beside the others, not what it would learn
alone; like `sampling_bands_testbed.py` this is a diagnosis of where an effect lies. "weights" reads the whole
adapter at other strengths instead (the LoRA weight a user sets in A1111 or ComfyUI): how the erasure and the changes
elsewhere grow with the adapter's size. "rotated" is the control for both: the adapter with what each layer's LoRA
writes turned by a random orthogonal matrix of its output space (Q·up), with what it reads turned in its input
space (down·P), or both. Each layer's change keeps its size and singular values; only where it points is random. What
such a copy still changes is what any change of that size there changes; what it no longer changes was the
trained directions' doing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

READINGS = (("concept_erased", "red erased"), ("orange_vs_base", "orange ÷ base"),
            ("background_kept", "background kept"), ("background_right_kept", "background kept where drawn as asked"),
            ("shape_accuracy_vs_base", "shape acc. ÷ base"),
            ("colour_kept", "other colours kept"), ("concept_background_kept", "red prompts' background"),
            ("concept_shape_kept", "red prompts' shape"))
BLOCK = re.compile(r"^lora_unet_((?:down_blocks|up_blocks)_\d+_(?:attentions|resnets)_\d+"
                   r"|mid_block_(?:attentions|resnets)_\d+)_")


def block_of(key: str) -> str | None:
    """The attention or ResNet block a kohya key belongs to (None for keys outside one: the text encoder,
    the down- and upsamplers, the time embedding)."""
    m = BLOCK.match(key)
    return m.group(1) if m else None


def variants(keys, modes: list[str]) -> dict[str, set]:
    """name → the keys each copy keeps: the whole adapter, and per block (in the UNet's order) without / only it."""
    keys = set(keys)
    by_block: dict[str, set] = {}
    for k in keys:
        if block := block_of(k):
            by_block.setdefault(block, set()).add(k)
    out = {"whole": keys}
    for b in sorted(by_block, key=_unet_order):
        mine = by_block[b]
        if "without" in modes:
            out[f"without {b}"] = keys - mine
        if "only" in modes:
            out[f"only {b}"] = mine
    return out


def _unet_order(block: str) -> tuple:
    part = {"down": 0, "mid": 1, "up": 2}[block.split("_")[0]]
    # within a level the UNet runs resnets_i before attentions_i
    return (part, *[int(n) for n in re.findall(r"\d+", block)], "attentions" in block)


def read_adapter(adapter: Path) -> tuple[dict, dict]:
    """The adapter's metadata and tensors, in one read for every copy."""
    from safetensors import safe_open

    with safe_open(str(adapter), "pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


def write_copies(copies: dict[str, dict], metadata: dict, folder: Path) -> dict[str, Path]:
    """Each copy (name → its tensors) as its own file with the adapter's metadata, named so the readings can tell
    them apart."""
    from safetensors.torch import save_file

    paths = {}
    for i, (name, tensors) in enumerate(copies.items()):
        path = folder / f"{i:02d}_{re.sub(r'[^A-Za-z0-9]+', '_', name)}.safetensors"
        save_file(tensors, str(path), metadata=metadata)
        paths[name] = path
    return paths


ROTATIONS = ("writes", "reads", "both")


def rotated(tensors: dict, turn: str, seed: int, layers: tuple[str, ...] = ()) -> dict:
    """The LoRA tensors with each layer's up turned by a random orthogonal Q of its output space ("writes"), its
    down by one of its input space ("reads"), or both; alphas and the singular values of each layer's change are
    kept. With `layers`, only keys holding one of those names are turned, each as it is in the whole copy."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def haar(n: int):  # uniformly random over the orthogonal matrices
        return torch.nn.init.orthogonal_(torch.empty(n, n, dtype=torch.float64), generator=g)

    out = dict(tensors)
    for key in sorted(tensors):  # sorted: the same seed turns the same layer the same way in every run
        up = key.endswith("lora_up.weight") and turn in ("writes", "both")
        if not (up or key.endswith("lora_down.weight") and turn in ("reads", "both")):
            continue
        w = tensors[key].to(torch.float64)
        flat = w.reshape(w.shape[0], -1)  # a convolution's input as its patches
        turned = haar(flat.shape[0]) @ flat if up else flat @ haar(flat.shape[1])
        if not layers or any(name in key for name in layers):  # drawn either way: the other layers' turns stay
            out[key] = turned.reshape(w.shape).to(tensors[key].dtype)
    return out


def rotated_copies(tensors: dict, seeds: list[int], turns=ROTATIONS, layers: tuple[str, ...] = ()) -> dict[str, dict]:
    """name → the adapter turned as `rotated` says, once per seed and turn."""
    named = f" ({', '.join(layers)})" if layers else ""
    return {f"{turn} rotated{named}, seed {seed}": rotated(tensors, turn, seed, layers)
            for seed in seeds for turn in turns}


def print_readings(rows: dict[str, dict]) -> None:
    """One line per copy (or adapter) with the READINGS of `close_and_agreement`."""
    width = max(map(len, rows))
    print(f"{'':{width}s}  " + " | ".join(label for _, label in READINGS))
    for name, r in rows.items():
        print(f"{name:{width}s}  " + " | ".join(f"{r[key]:.3f}" for key, _ in READINGS), flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("adapter")
    p.add_argument("--model", default="testbed")
    p.add_argument("--modes", default="without,only", help="comma-separated: without, only, weights, rotated")
    p.add_argument("--weights", default="0.25,0.5,0.75,1.25", help="strengths the weights mode reads")
    p.add_argument("--rotation-seeds", default="0", help="seeds of the rotated mode's random rotations")
    p.add_argument("--turns", default=",".join(ROTATIONS), help="the rotated mode's turns: writes, reads, both")
    p.add_argument("--rotate-layers", default="", help="turn only the keys holding one of these comma-separated "
                   "names (attn1_to_v, up_blocks_0, ...); by default every layer")
    p.add_argument("--seed", type=int, default=0, help="first evaluation seed (the efficacy table's: 0)")
    p.add_argument("--images-per-prompt", type=int, default=4)
    p.add_argument("--json", help="also write every reading here")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - {"without", "only", "weights", "rotated"}:
        raise SystemExit(f"--modes takes without, only, weights and/or rotated, got {args.modes!r}")
    try:
        weights = [float(w) for w in args.weights.split(",")] if "weights" in modes else []
    except ValueError:
        raise SystemExit(f"--weights takes comma-separated numbers, got {args.weights!r}") from None
    try:
        seeds = [int(s) for s in args.rotation_seeds.split(",")] if "rotated" in modes else []
    except ValueError:
        raise SystemExit(f"--rotation-seeds takes comma-separated integers, got {args.rotation_seeds!r}") from None
    turns = tuple(t.strip() for t in args.turns.split(",") if t.strip())
    if not turns or set(turns) - set(ROTATIONS):
        raise SystemExit(f"--turns takes writes, reads and/or both, got {args.turns!r}")
    rotate_layers = tuple(n.strip() for n in args.rotate_layers.split(",") if n.strip())

    from duo_unlearn.trainer.errors import UserError
    from duo_unlearn.trainer.evaluate.methods import BASE, Method, adapter_method
    from duo_unlearn.trainer.presets import get_preset
    from efficacy_testbed import close_and_agreement

    preset = get_preset("testbed-red")
    adapter = Path(args.adapter)
    try:
        whole = adapter_method(adapter)  # the same checks as any adapter
    except UserError as e:
        raise SystemExit(f"block_ablation_testbed: {e}") from None
    metadata, tensors = read_adapter(adapter)
    kept = variants(tensors, modes)
    if rotate_layers and "rotated" in modes and not any(n in k for k in kept["whole"] for n in rotate_layers):
        raise SystemExit(f"block_ablation_testbed: no key of {adapter.name} holds any of {', '.join(rotate_layers)}")
    if len(kept) == 1 and set(modes) - {"weights", "rotated"}:
        raise SystemExit(f"block_ablation_testbed: no attention or ResNet block in {adapter.name}'s keys (SD 1.x "
                         "kohya names, lora_unet_<down|mid|up>_..._<attentions|resnets>_<n>_..., are read; SDXL files "
                         "use the original UNet's)")
    with tempfile.TemporaryDirectory() as tmp:
        copies = {name: {k: tensors[k] for k in sorted(keys)}
                  for name, keys in kept.items() if name != "whole" and keys}
        copies |= rotated_copies(tensors, seeds, turns, rotate_layers)
        paths = write_copies(copies, metadata, Path(tmp))
        methods = {"whole": whole} | {name: adapter_method(path) for name, path in paths.items()}
        # the same file at other strengths: each is loaded under its own adapter name, the readings key them by name
        methods |= {f"whole at {w:g}": dataclasses.replace(whole, name=f"{whole.name} at {w:g}", weight=w)
                    for w in weights}
        out = close_and_agreement(args.model, [Method("base", BASE), *methods.values()], list(preset.unrelated_prompts),
                                  args.images_per_prompt, args.seed, preset.sample_steps, preset.guidance)
    rows = {name: out[m.name] for name, m in methods.items()}
    print_readings(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"adapter": str(adapter), "seed": args.seed, "readings": rows},
                                              indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
