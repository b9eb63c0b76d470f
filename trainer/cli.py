"""`duo-unlearn`: train, inspect and (later) evaluate DUO adapters from the command line."""
from __future__ import annotations

import argparse
import errno
import json
import math
import sys
from contextlib import contextmanager

from .errors import Cancelled, UserError, out_of_memory_line


_BAR_UNITS = {"pairs": "step", "retain": "image", "cache": "image", "train": "step"}  # the stages drawn as bars


class _TqdmProgress:
    """Progress bars per stage on stderr. close() ends the open ones, so that an error line printed after a failed
    run is the last thing on stderr (a bar left open would otherwise redraw itself after it, when collected)."""

    def __init__(self):
        self.bars: dict[str, object] = {}

    def __call__(self, event):
        from tqdm import tqdm

        if event.message:  # above the bars (tqdm.write), so a step's note is not lost under them
            tqdm.write(f"[{event.stage}] {event.message}", file=sys.stderr)
        elif event.stage in _BAR_UNITS and event.total:
            bar = self.bars.get(event.stage)
            if bar is None:
                bar = self.bars[event.stage] = tqdm(total=event.total, desc=event.stage,
                                                    unit=_BAR_UNITS[event.stage], initial=event.step)
            bar.n = event.step
            if event.logs:
                bar.set_postfix({k: f"{v:.4g}" for k, v in event.logs.items() if isinstance(v, (int, float))},
                                refresh=False)
            bar.refresh()
            if event.step >= event.total:
                self.bars.pop(event.stage).close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


@contextmanager
def _tqdm_progress():
    progress = _TqdmProgress()
    try:
        yield progress
    finally:
        progress.close()


def cmd_train(args) -> int:
    from .cli_options import build_config, load_toml
    from .config import TrainConfig
    from .train import train

    cfg = build_config(TrainConfig, args, load_toml(args.config) if args.config else None)
    if not cfg.pairs:
        raise UserError("--pairs is required (a folder with unsafe/, safe/ and pairs.jsonl)")
    with _tqdm_progress() as progress:
        result = train(cfg, progress=progress)
    print(f"adapter written: {result.adapter} ({result.steps} steps, {result.seconds:.0f}s)")
    for p in result.previews:
        print(f"preview: {p}")
    return 0


def cmd_pairs(args) -> int:
    from .cli_options import build_config
    from .pairs import PairConfig, generate_pairs
    from .presets import get_preset

    cfg = build_config(PairConfig, args)
    if cfg.retain_prompts and not cfg.num_retain:  # the prompts alone make no retain image: said, not ignored
        raise UserError("--retain-prompt needs --num-retain N: how many retain images to make from those prompts")
    if args.preset:
        preset = get_preset(args.preset)
        if not (cfg.unsafe_prompts or cfg.safe_prompts):
            if not preset.concepts:
                raise UserError(f"preset {preset.name} has no prompts of its own: give --unsafe-prompt and "
                                "--safe-prompt")
            concepts = preset.concepts_named(args.concept)
            if len(concepts) != 1:
                raise UserError(f"preset {preset.name} has concepts {', '.join(c.name for c in preset.concepts)}: "
                                "choose one with --concept")
            cfg.unsafe_prompts, cfg.safe_prompts = concepts[0].unsafe_prompts, concepts[0].safe_prompts
        elif not (cfg.unsafe_prompts and cfg.safe_prompts):
            raise UserError(f"give both --unsafe-prompt and --safe-prompt to replace preset {preset.name}'s "
                            "prompts, or neither")
        # the preset's recipe stays under prompts of the user's own: flags override it one by one
        given = {k for k, v in vars(args).items() if v is not None}
        for key in ("num_pairs", "strength", "detector", "guidance", "sample_steps"):
            if key not in given:
                setattr(cfg, key, getattr(preset, key))
        if "model" not in given and preset.model:
            cfg.model = preset.model
    with _tqdm_progress() as progress:
        stats = generate_pairs(cfg, progress=progress)
    print(f"pairs in {stats.folder}: {stats.made} made, {stats.kept_existing} kept from before, "
          f"{stats.skipped} skipped {stats.skipped_reasons or ''} ({stats.seconds:.0f}s)")
    if stats.contact_sheet:
        print(f"contact sheet: {stats.contact_sheet}")
    return 0


def cmd_unlearn(args) -> int:
    from .cli_options import build_config, load_toml
    from .unlearn import UnlearnConfig, stacking_hint, unlearn

    cfg = build_config(UnlearnConfig, args, load_toml(args.config) if args.config else None)
    with _tqdm_progress() as progress:
        results = unlearn(cfg, progress=progress)
    for r in results:
        print(f"{r.concept}: adapter {r.adapter} ({r.pairs.made + r.pairs.kept_existing} pairs, {r.seconds:.0f}s)")
        if r.preview:
            print(f"  preview (base | unlearned): {r.preview}")
    if len(results) > 1:
        print("stack them: " + stacking_hint(results))
    return 0


def _finite(value):
    """JSON has no NaN or Infinity (json.dumps would print them bare, which parsers refuse): as strings instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def cmd_info(args) -> int:
    from .export import describe_adapter, printable

    info = describe_adapter(args.adapter)
    if args.json:
        print(json.dumps(_finite(info), indent=2))  # JSON escapes control characters itself
        return 0
    print(printable(f"{info['file']}: {info['modules']} LoRA modules, {info['tensors']} tensors, "
                    f"{info['format']} names"))
    for key, value in sorted(info["metadata"].items()):
        print(printable(f"  {key}: {value}"))
    for key, value in sorted(info["duo"].items()):
        print(printable(f"  duo.{key}: {json.dumps(value) if not isinstance(value, str) else value}"))
    if not info["is_duo"]:
        print("  (no duo.* metadata: not made by duo-unlearn)")
    return 0


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1 to 65535, got {port}")
    return port


def cmd_ui(args) -> int:
    import socket

    from ..extension.app import serve

    try:  # an address no resolver knows would make the server retry binding forever
        socket.getaddrinfo(args.host, None)
    except (socket.gaierror, UnicodeError):
        raise UserError(f"--host {args.host}: no such address or host name (e.g. 127.0.0.1, or 0.0.0.0 for every network)") from None

    serve(host=args.host, port=args.port, lora_dir=args.lora_dir, work_dir=args.work_dir, model=args.model,
          share=args.share)
    return 0


def cmd_eval(args) -> int:
    from .cli_options import build_config, load_toml
    from .evaluate import EvalConfig, evaluate, summary_table

    cfg = build_config(EvalConfig, args, load_toml(args.config) if args.config else None)
    with _tqdm_progress() as progress:
        result = evaluate(cfg, progress=progress)
    print(summary_table(result))
    print(f"report: {result['files']['report']}\nplot: {result['files']['plot']}")
    return 0


def cmd_testbed_train(args, rest) -> int:
    from .testbed.train import main as testbed_main

    return testbed_main(rest)


def build_parser() -> argparse.ArgumentParser:
    from .cli_options import OneLineParser, add_dataclass_flags
    from .config import TrainConfig
    from .pairs import PairConfig
    from .evaluate.run import HELP as EVAL_HELP, EvalConfig
    from .unlearn import UnlearnConfig

    parser = OneLineParser(prog="duo-unlearn", description="DUO concept unlearning for Stable Diffusion.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("train", help="train a DUO adapter on a pair dataset",
                       description="Train a DUO LoRA on a pair dataset. Every flag can also come from --config.")
    p.add_argument("--config", help="TOML file with any of the settings below (flags given here win)")
    add_dataclass_flags(p, TrainConfig)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("pairs", help="make a pair dataset (unsafe images + SDEdit safe twins)",
                       description="Generate unsafe images and their SDEdit safe twins into a resumable folder.")
    p.add_argument("--preset", help="take prompts and settings from a preset (flags given here win)")
    p.add_argument("--concept", help="which concept of a multi-concept preset")
    add_dataclass_flags(p, PairConfig, help_texts={"out": "folder to write the pair dataset into (resumable)"})
    p.set_defaults(func=cmd_pairs)
    p = sub.add_parser("unlearn", help="preset -> pairs -> training -> adapter -> preview, in one go",
                       description="Unlearn a concept end to end. With no --model it uses the bundled test bed. "
                                   "Every flag can also come from --config.")
    p.add_argument("--config", help="TOML file with any of the settings below (flags given here win)")
    add_dataclass_flags(p, UnlearnConfig)
    p.set_defaults(func=cmd_unlearn)
    p = sub.add_parser("info", help="show an adapter's metadata")
    p.add_argument("adapter", help="a .safetensors LoRA file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("ui", help="serve the Gradio tab (Unlearn concept, Compare adapters) in a browser",
                       description="Serve the tab that A1111/Forge show, standalone, with the test bed preselected.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=None, help="port (default: gradio's, 7860 or the next free one)")
    p.add_argument("--lora-dir", default=None, help="folder the adapters are saved in and listed from "
                                                      "(default ~/duo-unlearn/loras)")
    p.add_argument("--work-dir", default=None, help="folder for pair datasets (default <lora-dir>/.duo-unlearn)")
    p.add_argument("--model", default="testbed", help="model preselected in the tab (default: the SD 1.x test bed; "
                                                         "testbed-xl: the SDXL one, testbed-sd3: the SD3 one)")
    p.add_argument("--share", action="store_true", default=False,
                   help="also open a public gradio share link (off unless given)")
    p.set_defaults(func=cmd_ui)
    p = sub.add_parser("eval", help="DSR under attacks and prior preservation of adapters, base, negative prompt",
                       description="Evaluate adapters (and the base model, and negative prompting) against direct "
                       "prompts, prompt attacks, Concept Inversion, a Ring-A-Bell-style search and "
                       "UnlearnDiffAtk-style adversarial prompts; writes a JSON report, a DSR-vs-preservation plot "
                       "and image grids.")
    p.add_argument("--config", help="TOML file with any of the settings below (flags given here win)")
    add_dataclass_flags(p, EvalConfig, help_texts=EVAL_HELP)
    p.set_defaults(func=cmd_eval)
    sub.add_parser("testbed-train", help="retrain the bundled test-bed model (see its --help)", add_help=False)
    return parser


_USER_ERRNOS = {errno.ENAMETOOLONG, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                errno.ENOTDIR, errno.ELOOP}


def main(argv: list[str] | None = None) -> int:
    import logging

    # bitsandbytes (imported by peft) warns on every run about optional CPU kernels it could not load: a line
    # above every error and result that says nothing about the user's input
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # transformers, without torchvision (which `pip install .` does not bring), says twice per run that it falls back
    # to the PIL image processors: diffusers' pipelines import those classes, and no model here uses them
    logging.getLogger("transformers.utils.import_utils").setLevel(logging.ERROR)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0] == "testbed-train":
            return cmd_testbed_train(None, argv[1:])
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return 2
        return args.func(args)
    except UserError as e:
        print(f"duo-unlearn: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`duo-unlearn info A | head -1`): what it wanted was printed. Python would
        # complain again when it flushes stdout at exit, so stdout is pointed at /dev/null first.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        # The last line of defence for a file system refusal no check foresaw (a name too long for the file
        # system, a full disk, a read-only folder): one line, as for any other bad input.
        if e.errno not in _USER_ERRNOS:
            raise
        where = f": {e.filename}" if e.filename else ""
        print(f"duo-unlearn: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except (Cancelled, KeyboardInterrupt):
        print("duo-unlearn: stopped; checkpoints (if any) are kept for --resume", file=sys.stderr)
        return 130
    except RuntimeError as e:  # torch.OutOfMemoryError is one: a card too small for the model is said in one line
        line = out_of_memory_line(e)
        if line is None:
            raise
        print(f"duo-unlearn: error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
