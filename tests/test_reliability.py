"""Issue 9, sections 2-7, one case per finding: bad input gets one clear line and exit 2, nothing already made is lost
or overwritten, nothing outside the user's folders is read, no traceback.

Every case runs `duo-unlearn` in-process (a real shell pipeline only for `info | head -1`) on a tiny random model,
snapshots the temporary tree (and the model folder) before and after, and checks:
  * the exit code (2, or 0 for the cases that must succeed),
  * exactly one stderr line starting with `duo-unlearn: error:` (the last one; for input refused before any work,
    the only line), and no "Traceback",
  * no file added, removed or changed except the case's intended ones.
The last test prints the catalogue's size and its counts.
"""
from __future__ import annotations

import errno
import fcntl
import fnmatch
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from types import SimpleNamespace
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from duo_unlearn.trainer.cli import main

PREFIX = "duo-unlearn: error:"
TRAIN = ["--steps", "2", "--rank", "2", "--batch-pairs", "2"]


# -- fixtures: a tiny model (random weights: the catalogue needs a model that loads and trains, not a good one) --

@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    from tiny_models import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("rel_model"), pretrain_steps=0)


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory, model, pair_dir) -> Path:
    """A checkpoint folder left by a 4-step run at rank 2 (checkpoint at step 2), as an interrupted run leaves it."""
    from tiny_models import interrupted_run

    ck = interrupted_run(tmp_path_factory.mktemp("rel_ckpt"), model, pair_dir, every=2)
    assert (ck / "step-000002" / "state.pt").exists()
    return ck


# -- snapshots --

def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every file, folder and link under the roots: kind, mode and content hash (size + mtime for big files)."""
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = p.lstat()
                if p.is_symlink():
                    out[str(p)] = ("link", os.readlink(p))
                elif p.is_dir():
                    out[str(p)] = ("dir", st.st_mode & 0o7777)
                elif st.st_size > 4 * 2**20:
                    out[str(p)] = ("file", st.st_mode & 0o7777, st.st_size, st.st_mtime_ns)
                else:
                    out[str(p)] = ("file", st.st_mode & 0o7777, hashlib.sha1(p.read_bytes()).hexdigest())
    return out


def diff(before: dict, after: dict) -> tuple[set, set, set]:
    added = set(after) - set(before)
    removed = set(before) - set(after)
    changed = {k for k in set(before) & set(after) if before[k] != after[k]}
    return added, removed, changed


# -- the catalogue --

@dataclass
class Case:
    section: str  # issue 9 section: data loss, outside reads, nan, traceback, quiet wrong, smaller
    setup: Callable  # (env) -> argv; may prepare files under env.tmp and monkeypatch
    expect: str = ""  # substring of the error line (exit 2), or of stdout (exit 0)
    code: int = 2
    early: bool = True  # refused before any work: the error line is all of stderr
    allowed: tuple[str, ...] = ()  # glob patterns (relative to tmp) of files this case may add or change
    check: Callable | None = None  # (env, out, err) -> None: further assertions
    mark: object = None


@dataclass
class Env:
    tmp: Path
    model: Path
    pair_dir: Path
    monkeypatch: object
    checkpointed: Callable[[], Path]
    extra_roots: list = field(default_factory=list)

    def pairs(self, name: str = "pairs") -> Path:
        """A private copy of the pair dataset, to mutate."""
        dest = self.tmp / name
        shutil.copytree(self.pair_dir, dest)
        return dest

    def train(self, *extra, pairs: Path | None = None, out: str = "out.safetensors") -> list[str]:
        return ["train", "--pairs", str(pairs or self.pairs()), "--model", str(self.model),
                "--out", str(self.tmp / out), *TRAIN, *extra]

    def write_index(self, folder: Path, *lines: str | bytes) -> None:
        data = b"".join((ln if isinstance(ln, bytes) else ln.encode()) + b"\n" for ln in lines)
        (folder / "pairs.jsonl").write_bytes(data)


def record(**over) -> str:
    r = {"id": "0000", "unsafe": "unsafe/0000.png", "safe": "safe/0000.png", "unsafe_prompt": "a red square",
         "safe_prompt": "a blue square"}
    r.update(over)
    return json.dumps(r)


def png_bomb(path: Path, side: int = 30_000) -> None:
    """A real 1-bit PNG of side x side pixels (9e8: over Pillow's bomb limit) that is ~100 kB on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + side // 8)
    z = zlib.compressobj(9)
    body = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def fail_with_enospc(path) -> None:
    """A full disk: part of the file gets written, then the write fails."""
    with open(path, "wb") as f:
        f.write(b"partial")
    raise OSError(errno.ENOSPC, "No space left on device")


def fail_like_safetensors_on_full_disk(path) -> None:
    """What safetensors' save_file really raises on a full disk: its own error class, not an OSError."""
    import safetensors

    with open(path, "wb") as f:
        f.write(b"partial")
    raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


# section 2: data loss

def _ckpt_dir_user_folder(env: Env):
    (env.tmp / "important").mkdir()
    (env.tmp / "important" / "thesis.txt").write_text("years of work")
    return env.train("--checkpoint-every", "1", "--checkpoint-dir", str(env.tmp / "important"))


def _ckpt_notes(env: Env):
    (env.tmp / "out.safetensors.checkpoints").mkdir()
    (env.tmp / "out.safetensors.checkpoints" / "notes.txt").write_text("mine")
    return env.train("--checkpoint-every", "1")


def _existing_adapter(env: Env, *extra, command="train"):
    (env.tmp / "out.safetensors").write_bytes(b"an adapter the user already has")
    if command == "train":
        return env.train(*extra)
    return ["unlearn", "--out", str(env.tmp / "out.safetensors"), *extra]


def _replaced(env: Env, out, err):
    from duo_unlearn.trainer.export import read_metadata

    assert read_metadata(env.tmp / "out.safetensors")["duo.steps"] == "2"


def _unlearn_overwrite(env: Env):
    return _existing_adapter(env, "--overwrite", "--model", str(env.model), "--num-pairs", "2", "--steps", "2",
                             "--rank", "2", "--batch-pairs", "2", "--detector", "none", "--no-preview",
                             command="unlearn")


def _model_copy(env: Env) -> Path:
    dest = env.tmp / "model"
    shutil.copytree(env.model, dest)
    return dest


def _out_inside_model(env: Env):
    m = _model_copy(env)
    return ["train", "--pairs", str(env.pairs()), "--model", str(m), "--out",
            str(m / "unet" / "diffusion_pytorch_model.safetensors"), "--overwrite", *TRAIN]


# section 3: reads outside the dataset (see also test_outside_paths_tell_nothing)

def _outside(env: Env, exists: bool) -> Path:
    (env.tmp / "outside").mkdir(exist_ok=True)
    target = env.tmp / "outside" / "secret.png"
    if exists:
        shutil.copy(env.pair_dir / "unsafe" / "0000.png", target)
    return target


def _abs_path(env: Env, exists: bool):
    p = env.pairs()
    env.write_index(p, record(unsafe=str(_outside(env, exists))))
    return env.train(pairs=p)


def _dotdot_path(env: Env, exists: bool):
    p = env.pairs()
    _outside(env, exists)
    env.write_index(p, record(unsafe="../outside/secret.png"))
    return env.train(pairs=p)


def _symlink(env: Env, exists: bool):
    p = env.pairs()
    target = _outside(env, exists)
    (p / "unsafe" / "0000.png").unlink()
    (p / "unsafe" / "0000.png").symlink_to(target)
    return env.train(pairs=p)


# section 5: tracebacks

def _pickled_model(env: Env):
    import torch
    from safetensors.torch import load_file

    m = _model_copy(env)
    weights = m / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(weights)), m / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    return ["train", "--pairs", str(env.pairs()), "--model", str(m), "--out", str(env.tmp / "out.safetensors"),
            *TRAIN]


def _bomb(env: Env):
    p = env.pairs()
    png_bomb(p / "unsafe" / "0000.png")
    env.write_index(p, record())
    return env.train(pairs=p)


def _index(*lines):
    def setup(env: Env):
        p = env.pairs()
        env.write_index(p, *lines)
        return env.train(pairs=p)
    return setup


def _numeric_prompt(env: Env):
    p = env.pairs()
    env.write_index(p, '{"id": "0000", "unsafe": "unsafe/0000.png", "safe": "safe/0000.png", "unsafe_prompt": 5, '
                       '"safe_prompt": "a blue square"}')
    return env.train("--condition", "prompt", pairs=p)


def _enospc_checkpoint(env: Env):
    import torch

    env.monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: fail_with_enospc(f))
    return env.train("--checkpoint-every", "1")


def _enospc_checkpoint_users_folder(env: Env):
    (env.tmp / "mine").mkdir()
    return _enospc_checkpoint(env) + ["--checkpoint-dir", str(env.tmp / "mine")]


def _enospc_adapter(env: Env):
    import safetensors.torch

    env.monkeypatch.setattr(safetensors.torch, "save_file", lambda tensors, f, *a, **k: fail_with_enospc(f))
    return env.train()


def _safetensors_enospc(env: Env, *extra):
    import safetensors.torch

    env.monkeypatch.setattr(safetensors.torch, "save_file",
                            lambda tensors, f, *a, **k: fail_like_safetensors_on_full_disk(f))
    return env.train(*extra)


def _read_only_checkpoint_dir(env: Env):
    """A folder that takes no new files (as root, permission bits do not stop writes: the probe is refused here)."""
    import tempfile

    ck = env.tmp / "ck"
    ck.mkdir()
    real = tempfile.mkstemp

    def mkstemp(*a, dir=None, **k):
        if dir is not None and Path(dir) == ck:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*a, dir=dir, **k)
    env.monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    return env.train("--checkpoint-every", "1", "--checkpoint-dir", str(ck))


def _resume(*extra, damage: str | None = None):
    def setup(env: Env):
        ck = env.tmp / "ck"
        shutil.copytree(env.checkpointed(), ck)
        if damage:
            f = ck / "step-000002" / damage
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        return env.train("--resume", "--checkpoint-dir", str(ck), *extra)
    return setup


def _corrupt_dataset_json(env: Env):
    p = env.pairs()
    (p / "dataset.json").write_text('{"settings": {"num_pairs": 6,')
    return ["pairs", "--out", str(p), "--model", str(env.model), "--unsafe-prompt", "a red square",
            "--safe-prompt", "a blue square", "--num-pairs", "6"]


def _big_adapter(env: Env):
    from safetensors.torch import save_file
    import torch

    adapter = env.tmp / "big.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 1)}, str(adapter),
              metadata={f"duo.note{i:03d}": "x" * 10_000 for i in range(200)})  # 2 MB of output, far over a pipe
    return ["info", str(adapter)]


def _no_traceback_in_pipe(env: Env, out, err):
    """`duo-unlearn info A | head -1` through a real shell: head takes the first line, the writer gets EPIPE."""
    adapter = env.tmp / "big.safetensors"
    exe = Path(sys.executable).parent / "duo-unlearn"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "duo_unlearn.trainer.cli"]
    run = subprocess.run(["bash", "-c", 'set -o pipefail; "$@" | head -1', "sh", *cmd, "info", str(adapter)],
                         capture_output=True, text=True, timeout=60)
    assert run.stdout.startswith(str(adapter)) and run.stdout.count("\n") == 1, run.stdout[:200]
    assert run.stderr == "", run.stderr
    assert run.returncode == 0, run.returncode


# section 6: quiet wrong results

def _pairs_locked(env: Env):
    folder = env.tmp / "busy"
    (folder / "unsafe").mkdir(parents=True)
    (folder / "safe").mkdir()
    fd = os.open(folder, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the other run holds the folder
    env.lock = SimpleNamespace(close=lambda: os.close(fd))  # closed (so unlocked) when the case ends
    return ["pairs", "--out", str(folder), "--model", str(env.model), "--unsafe-prompt", "a red square",
            "--safe-prompt", "a blue square", "--num-pairs", "2"]


# section 7: smaller

def _umask(mask: int):
    def setup(env: Env):
        os.umask(mask)  # the runner restores the umask
        return env.train()
    return setup


def _mode_is(mode: int):
    def check(env: Env, out, err):
        assert (env.tmp / "out.safetensors").stat().st_mode & 0o777 == mode, oct(
            (env.tmp / "out.safetensors").stat().st_mode)
    return check


def _escape_metadata(env: Env):
    from safetensors.torch import save_file
    import torch

    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 1)}, str(env.tmp / "evil.safetensors"),
              metadata={"duo.concept": "\x1b[31mred\x1b[0m", "ss_output_name": "a\x07b"})
    return ["info", str(env.tmp / "evil.safetensors")]


def _escaped(env: Env, out, err):
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b[31mred\\x1b[0m" in out and "a\\x07b" in out


def _big_header(env: Env):
    from safetensors import safe_open  # noqa: F401  (imported now, so the guard below only sees the call)
    import duo_unlearn.trainer.export as export

    path = env.tmp / "huge.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", 50 * 2**20))
        f.truncate(50 * 2**20 + 8)  # sparse: a 50 MB header that a naive reader would load

    def no_loading(*a, **k):
        raise AssertionError("the header was handed to safetensors")
    env.monkeypatch.setattr("safetensors.safe_open", no_loading)
    assert export.MAX_HEADER < 50 * 2**20
    env.started = time.perf_counter()
    return ["info", str(path)]


def _quick(env: Env, out, err):
    assert time.perf_counter() - env.started < 2.0


def _pairs_help(env: Env):
    return ["pairs", "--help"]


def _out_is_a_folder(env: Env, out, err):
    options = out[out.index("\n  --out"):]  # the option's entry, not the usage line
    entry = " ".join(options[: options.index("\n  --", 3)].split())
    assert "folder" in entry and ".safetensors" not in entry, entry


def _quiet_loaders(env: Env):
    import logging

    seen: list[str] = []

    class Grab(logging.Handler):
        def emit(self, rec):
            seen.append(rec.getMessage())
    for name in ("diffusers", "transformers"):
        env.monkeypatch.setattr(logging.getLogger(name), "handlers", [Grab()])
    env.logged = seen
    return env.train()


def _no_safety_warning(env: Env, out, err):
    assert not [m for m in env.logged + [err] if "safety checker" in m.lower()], env.logged



# the twelfth session's audit: config values of the wrong type, argparse, ui, info, κ with β, resolution

def _toml(text: str, command: str = "train"):
    def setup(env: Env):
        (env.tmp / "c.toml").write_text(text)
        if command == "eval":
            return ["eval", "--model", str(env.model), "--out", str(env.tmp / "ev"), "--config", str(env.tmp / "c.toml")]
        (env.tmp / "out.safetensors").write_bytes(b"an adapter the user already has")  # kept: nothing is trained
        argv = env.train() if "overwrite" in text else env.train("--overwrite")
        for key in (ln.split("=")[0].strip() for ln in text.splitlines() if "=" in ln):  # flags would win
            flag = "--" + key.replace("_", "-")
            if flag in argv and key != "overwrite":
                del argv[argv.index(flag):argv.index(flag) + 2]
        return [*argv, "--config", str(env.tmp / "c.toml")]
    return setup


def _toml_no_pairs(env: Env):
    (env.tmp / "c.toml").write_text("pairs = 5\n")
    return ["train", "--model", str(env.model), "--out", str(env.tmp / "out.safetensors"),
            "--config", str(env.tmp / "c.toml")]


def _unlearn(env: Env) -> list[str]:
    return ["unlearn", "--model", str(env.model), "--preset", "testbed-red", "--no-preview",
            "--out", str(env.tmp / "u.safetensors")]


def _deep_pairs_line(env: Env):
    argv = env.train()
    pairs = Path(argv[argv.index("--pairs") + 1])
    with open(pairs / "pairs.jsonl", "a") as f:
        f.write("[" * 100_000 + "]" * 100_000 + "\n")
    return argv


def _not_a_lora(env: Env):
    import torch
    from safetensors.torch import save_file

    save_file({"foo.weight": torch.zeros(2, 2)}, str(env.tmp / "model.safetensors"))
    return ["info", str(env.tmp / "model.safetensors")]


def _adapter_of_another_family(env: Env):
    import torch
    from safetensors.torch import save_file

    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 4)},
              str(env.tmp / "xl.safetensors"), {"duo.family": "sdxl"})
    return ["eval", "--model", str(env.model), "--adapter", str(env.tmp / "xl.safetensors"), "--attacks", "direct",
            "--no-base", "--lpips-backbone", "random", "--out", str(env.tmp / "ev")]


def _model_file(rel: str, content: bytes | None):
    """A copy of the model with one config file replaced (None: by a folder of that name)."""
    def setup(env: Env):
        m = _model_copy(env)
        f = m / rel
        f.unlink()
        if content is None:
            f.mkdir()
        else:
            f.write_bytes(content)
        return ["train", "--pairs", str(env.pairs()), "--model", str(m), "--out", str(env.tmp / "out.safetensors"),
                *TRAIN]
    return setup


def _int_keys_ckpt(env: Env):
    import torch

    torch.save({1: torch.zeros(1)}, env.tmp / "intkeys.ckpt")
    return ["train", "--pairs", str(env.pairs()), "--model", str(env.tmp / "intkeys.ckpt"), "--out",
            str(env.tmp / "out.safetensors"), *TRAIN]


def _resume_with(name: str, content: bytes | None = None, obj=None):
    """A resume from a checkpoint whose `name` holds the right kind of file with the wrong kind of content."""
    def setup(env: Env):
        import torch

        ck = env.tmp / "ck"
        shutil.copytree(env.checkpointed(), ck)
        f = ck / "step-000002" / name
        if obj is not None:
            torch.save(obj, f)
        else:
            f.write_bytes(content)
        return env.train("--resume", "--checkpoint-dir", str(ck), "--steps", "4")
    return setup


def _out_appears_during_training(env: Env):
    """Another run (or the user) saves a file under --out while this one trains: it is kept."""
    import duo_unlearn.trainer.train as train_mod

    real = train_mod.atomic_save

    def racing(tensors, path, metadata, replace=True):
        Path(path).write_bytes(b"the user's adapter, saved meanwhile")
        return real(tensors, path, metadata, replace=replace)
    env.monkeypatch.setattr(train_mod, "atomic_save", racing)
    return env.train()


def _kept_and_saved_beside(env: Env, out, err):
    from duo_unlearn.trainer.export import read_metadata

    assert (env.tmp / "out.safetensors").read_bytes() == b"the user's adapter, saved meanwhile"
    assert read_metadata(env.tmp / "out-2.safetensors")["duo.steps"] == "2"
    assert str(env.tmp / "out-2.safetensors") in err


def _adapter_that_does_not_fit(env: Env):
    import torch
    from safetensors.torch import save_file

    key = "lora_unet_down_blocks_0_attentions_0_proj_in"
    save_file({f"{key}.lora_down.weight": torch.zeros(2, 4), f"{key}.lora_up.weight": torch.zeros(7, 2)},
              str(env.tmp / "odd.safetensors"))
    return ["eval", "--model", str(env.model), "--adapter", str(env.tmp / "odd.safetensors"), "--attacks", "direct",
            "--no-base", "--lpips-backbone", "random", "--out", str(env.tmp / "ev")]


def _eval(env: Env, *extra) -> list[str]:
    return ["eval", "--model", str(env.model), "--attacks", "direct", "--no-base", "--lpips-backbone", "random",
            "--images-per-prompt", "1", "--max-prompts", "1", "--sample-steps", "2", "--out", str(env.tmp / "ev"),
            *extra]


def _ci_on_a_damaged_pair_image(env: Env):
    p = env.pairs()
    first = sorted((p / "unsafe").iterdir())[0]
    first.write_bytes(b"not a picture")
    return _eval(env, "--attacks", "concept_inversion", "--pairs", str(p), "--ci-steps", "1", "--ci-images", "2")


def _csv_header_past_the_limit(env: Env):
    (env.tmp / "big.csv").write_text("p" * 200_000 + "\na red square\n")
    return _eval(env, "--attacks", "prompts", "--prompts-file", str(env.tmp / "big.csv"))


def _nested_metadata(env: Env):
    import torch
    from safetensors.torch import save_file

    key = "lora_unet_down_blocks_0_attentions_0_proj_in"
    save_file({f"{key}.lora_down.weight": torch.zeros(2, 4), f"{key}.lora_up.weight": torch.zeros(4, 2)},
              str(env.tmp / "deep.safetensors"), {"duo.concept": "[" * 100_000, "duo.steps": "9" * 5000})
    return ["info", str(env.tmp / "deep.safetensors")]


def _report_appears_during_eval(env: Env):
    """Another evaluation (or the user) writes a report into --out while this one runs: it is kept."""
    import duo_unlearn.trainer.evaluate.report as report_mod  # imported by evaluate() when it writes the report

    real = report_mod.plot

    def racing(result, path, title):
        (env.tmp / "ev" / "report.json").write_text("the other run's report")
        return real(result, path, title)
    env.monkeypatch.setattr(report_mod, "plot", racing)
    return _eval(env)


def _other_report_kept(env: Env, out, err):
    assert (env.tmp / "ev" / "report.json").read_text() == "the other run's report"
    assert json.loads((env.tmp / "ev-2" / "report.json").read_text())["format"].startswith("duo-unlearn eval")
    assert str(env.tmp / "ev-2") in err


def _fid_reference_link_outside(env: Env):
    from PIL import Image

    ref = env.tmp / "ref"
    ref.mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8), (i * 100, 0, 0)).save(ref / f"{i}.png")
    Image.new("RGB", (8, 8)).save(env.tmp / "private.png")
    (ref / "2.png").symlink_to(env.tmp / "private.png")
    return _eval(env, "--fid-features", "testbed", "--fid-reference", str(ref), "--images-per-prompt", "2")


def _nan_metadata(env: Env):
    import torch
    from safetensors.torch import save_file

    key = "lora_unet_down_blocks_0_attentions_0_proj_in"
    save_file({f"{key}.lora_down.weight": torch.zeros(2, 4), f"{key}.lora_up.weight": torch.zeros(4, 2)},
              str(env.tmp / "nan.safetensors"), {"duo.beta": "NaN", "duo.lr": "Infinity"})
    return ["info", "--json", str(env.tmp / "nan.safetensors")]


def _json_parses(env: Env, out, err):
    info = json.loads(out, parse_constant=lambda c: pytest.fail(f"bare {c} in the JSON"))
    assert info["duo"]["beta"] == "nan" and info["duo"]["lr"] == "inf"


def _pairs_is_a_file(env: Env):
    (env.tmp / "pairs.txt").write_text("not a folder")
    return env.train(pairs=env.tmp / "pairs.txt")


CASES: dict[str, Case] = {
    # 2. data loss
    "checkpoint_dir_is_a_users_folder": Case("data loss", _ckpt_dir_user_folder, "adapter written", 0, False,
                                             ("out.safetensors",)),
    "checkpoints_folder_notes_survive": Case("data loss", _ckpt_notes, "adapter written", 0, False,
                                             ("out.safetensors",)),
    "train_out_exists": Case("data loss", lambda e: _existing_adapter(e), "already exists"),
    "train_out_exists_overwrite": Case("data loss", lambda e: _existing_adapter(e, "--overwrite"), "adapter written",
                                       0, False, ("out.safetensors",), _replaced),
    "unlearn_out_exists": Case("data loss", lambda e: _existing_adapter(e, command="unlearn"), "already exists"),
    "unlearn_out_exists_overwrite": Case("data loss", _unlearn_overwrite, "adapter", 0, False,
                                         ("out.safetensors", "out_pairs", "out_pairs/*"), _replaced),
    "out_inside_the_model": Case("data loss", _out_inside_model, "inside the model", early=False),
    # 3. reads outside the dataset
    **{f"{name}_{'existing' if exists else 'missing'}": Case(
        "outside reads", (lambda f, x: lambda e: f(e, x))(fn, exists), msg)
       for name, fn, msg in (("absolute_path", _abs_path, "not relative to the dataset folder"),
                             ("dotdot_path", _dotdot_path, "points outside the dataset folder"),
                             ("symlink", _symlink, "points outside the dataset folder"))
       for exists in (True, False)},
    # 4. NaN
    "lr_1e9_stops_keeps_checkpoint": Case(
        "nan", lambda e: e.train("--lr", "1e9", "--steps", "6", "--checkpoint-every", "1"), "training diverged",
        early=False, allowed=("out.safetensors.checkpoints", "out.safetensors.checkpoints/*",
                              "out.safetensors.checkpoints/step-*/*"),
        check=lambda e, o, r: (e.tmp / "out.safetensors.checkpoints" / "step-000001" / "state.pt").exists()
        or pytest.fail("no checkpoint kept")),
    "beta_1e308": Case("nan", lambda e: e.train("--beta", "1e308"), "derived from beta"),
    # 5. tracebacks
    "pickled_diffusers_folder": Case("traceback", _pickled_model, "pickle"),
    "decompression_bomb": Case("traceback", _bomb, "safety limit", early=False),
    "pairs_jsonl_not_utf8": Case("traceback", _index(b'{"id": "0000", "unsafe": "\xff\xfe"}'), "not UTF-8"),
    "unsafe_null": Case("traceback", _index(record(unsafe=None)), "'unsafe' has the wrong type"),
    "json_array_line": Case("traceback", _index("[1, 2, 3]"), "not a pair record"),
    "numeric_prompt": Case("traceback", _numeric_prompt, "'unsafe_prompt' has the wrong type"),
    "out_name_too_long": Case("traceback", lambda e: e.train(out="a" * 300 + ".safetensors"), "too long"),
    "out_name_too_long_for_derived_names": Case("traceback", lambda e: e.train(out="b" * 235 + ".safetensors"),
                                                "too long"),
    "pairs_name_too_long": Case("traceback", lambda e: e.train(pairs=e.tmp / ("p" * 300)), "too long"),
    "model_name_too_long": Case("traceback", lambda e: [str(e.tmp / ("m" * 300)) if a == str(e.model) else a
                                                        for a in e.train()], "too long"),
    "disk_full_at_checkpoint": Case("traceback", _enospc_checkpoint, "disk is full", early=False),
    "disk_full_at_checkpoint_in_users_empty_folder": Case("traceback", _enospc_checkpoint_users_folder,
                                                          "disk is full", early=False),
    "disk_full_at_adapter": Case("traceback", _enospc_adapter, "disk is full", early=False),
    "resume_other_rank": Case("traceback", _resume("--steps", "4", "--rank", "4"), "rank 2 -> 4", early=False),
    "resume_truncated_state": Case("traceback", _resume("--steps", "4", damage="state.pt"), "damaged",
                                   early=False),
    "resume_truncated_lora": Case("traceback", _resume("--steps", "4", damage="lora.safetensors"), "damaged",
                                  early=False),
    "corrupt_dataset_json": Case("traceback", _corrupt_dataset_json, "dataset.json is damaged"),
    "preview_steps_0": Case("traceback", lambda e: e.train("--preview-steps", "0", "--preview-prompts", "a red square"),
                            "preview_steps must be a positive integer"),
    "info_into_head": Case("traceback", _big_adapter, "big.safetensors", 0, check=_no_traceback_in_pipe),
    # 6. quiet wrong results
    "resume_steps_below_checkpoint": Case("quiet wrong", _resume("--steps", "1"), "beyond --steps 1", early=False),
    "fp16_on_cpu": Case("quiet wrong", lambda e: e.train("--mixed-precision", "fp16", "--device", "cpu"), "fp16",
                        early=False),
    "device_tpu9": Case("quiet wrong", lambda e: e.train("--device", "tpu9"), "tpu9"),
    "pairs_folder_locked": Case("quiet wrong", _pairs_locked, "another run is making pairs"),
    "rank_above_every_layer": Case("quiet wrong", lambda e: e.train("--rank", "64"), "rank 64 is larger",
                                   early=False),
    # 7. smaller
    "adapter_mode_umask_022": Case("smaller", _umask(0o022), "adapter written", 0, False, ("out.safetensors",),
                                   _mode_is(0o644)),
    "adapter_mode_umask_027": Case("smaller", _umask(0o027), "adapter written", 0, False, ("out.safetensors",),
                                   _mode_is(0o640)),
    "info_escapes_metadata": Case("smaller", _escape_metadata, "duo.concept", 0, check=_escaped),
    "info_refuses_50mb_header": Case("smaller", _big_header, "not a safetensors file", check=_quick),
    "pairs_help_calls_out_a_folder": Case("smaller", _pairs_help, "--out", 0, check=_out_is_a_folder),
    "no_safety_checker_warning": Case("smaller", _quiet_loaders, "adapter written", 0, False, ("out.safetensors",),
                                      _no_safety_warning),
    # 8. the twelfth session's audit
    "toml_bool_as_string": Case("audit", _toml('overwrite = "no"\n'), "overwrite must be true or false"),
    "toml_steps_not_whole": Case("audit", _toml("steps = 2.7\n"), "steps must be a whole number"),
    "toml_steps_bool": Case("audit", _toml("steps = true\n"), "steps must be a whole number"),
    "toml_rank_string": Case("audit", _toml('[lora]\nrank = "big"\n'), "rank must be a whole number"),
    "toml_pairs_number": Case("audit", _toml_no_pairs, "pairs must be a string"),
    "toml_preview_prompts_number": Case("audit", _toml("preview_prompts = 3\npreview_every = 1\n"),
                                        "preview_prompts must be a list of strings"),
    "eval_toml_attacks_number": Case("audit", _toml("attacks = 5\n", "eval"), "attacks must be a list of strings"),
    "eval_toml_seed_string": Case("audit", _toml('seed = "x"\n', "eval"), "seed must be a whole number"),
    "flag_not_an_int": Case("audit", lambda e: e.train("--steps", "abc"), "invalid int value"),
    "unknown_command": Case("audit", lambda e: ["frobnicate"], "invalid choice"),
    "ui_port_out_of_range": Case("audit", lambda e: ["ui", "--port", "99999"], "a port is 1 to 65535"),
    "ui_host_unknown": Case("audit", lambda e: ["ui", "--host", "999.1.1.1"], "no such address"),
    "info_not_a_lora": Case("audit", _not_a_lora, "holds no LoRA modules"),
    "info_on_a_folder": Case("audit", lambda e: ["info", str(e.tmp)], "is a folder, not an adapter file"),
    "config_is_a_folder": Case("audit", lambda e: [*e.train(), "--config", str(e.tmp)], "is a folder, not a config"),
    "pairs_is_a_file": Case("audit", _pairs_is_a_file, "is a file, not a pairs folder"),
    "kappa_and_beta": Case("audit", lambda e: e.train("--kappa", "5", "--beta", "100"), "not both"),
    "preview_every_without_prompts": Case("audit", lambda e: e.train("--preview-every", "1"), "needs preview prompts"),
    "ui_work_dir_is_a_file": Case("audit", lambda e: (e.tmp / "w.txt").write_text("x") and
                                  ["ui", "--work-dir", str(e.tmp / "w.txt"), "--lora-dir", str(e.tmp / "loras")],
                                  "is a file"),
    "eval_adapter_of_another_family": Case("audit", _adapter_of_another_family, "trained for the sdxl family",
                                           early=False, allowed=("ev", "ev/*")),
    "pairs_custom_without_prompts": Case("audit", lambda e: ["pairs", "--preset", "custom", "--out", str(e.tmp / "p")],
                                         "give --unsafe-prompt and --safe-prompt"),
    "train_preview_exists": Case("audit", lambda e: (e.tmp / "out.preview.png").write_bytes(b"the user's") and
                                 e.train("--preview-prompts", "a red square"), "out.preview.png already exists"),
    "pairs_resolution_too_large": Case("audit", lambda e: ["pairs", "--preset", "testbed-red", "--model", str(e.model),
                                                           "--resolution", "100000", "--out", str(e.tmp / "p")],
                                       "over 4096"),
    "resolution_too_large": Case("audit", lambda e: e.train("--resolution", "100000"), "over 4096"),
    # the thirteenth session's audit
    "seed_over_64_bits": Case("audit", lambda e: e.train("--seed", "99999999999999999999"),
                              "seed must be a whole number from 0 to"),
    "toml_seed_over_64_bits": Case("audit", _toml("seed = 99999999999999999999\n"), "seed must be a whole number"),
    "pairs_seed_over_range": Case("audit", lambda e: ["pairs", "--preset", "testbed-red", "--model", str(e.model),
                                                      "--seed", "99999999999999999999", "--out", str(e.tmp / "p")],
                                  "seed must be a whole number from 0 to 4294967295"),
    "unlearn_seed_over_range": Case("audit", lambda e: [*_unlearn(e), "--seed", str(2**40)], "seed must be"),
    "unlearn_zero_steps": Case("audit", lambda e: [*_unlearn(e), "--steps", "0"], "steps must be a positive"),
    "unlearn_pairs_dir_is_out": Case("audit", lambda e: [*_unlearn(e), "--pairs-dir", str(e.tmp / "u.safetensors")],
                                     "both name"),
    "weight_decay_nan": Case("audit", lambda e: e.train("--weight-decay", "nan"), "weight_decay must be zero or"),
    "grad_clip_nan": Case("audit", lambda e: e.train("--grad-clip", "nan"), "grad_clip must be zero or positive"),
    "toml_lora_string_with_rank_flag": Case("audit", _toml('lora = "x"\n'), "[lora] must be a table"),
    "toml_lora_array_with_rank_flag": Case("audit", _toml("[[lora]]\nrank = 2\n"), "[lora] must be a table"),
    "checkpoint_dir_is_a_file": Case("audit", lambda e: (e.tmp / "ck.txt").write_text("notes") and
                                     e.train("--checkpoint-every", "1", "--checkpoint-dir", str(e.tmp / "ck.txt")),
                                     "is a file; checkpoints need a folder"),
    "target_is_a_block": Case("audit", lambda e: e.train("--target-modules", "attn1"),
                              "names Attention modules", early=False),
    "pairs_unknown_concept": Case("audit", lambda e: ["pairs", "--preset", "testbed-red", "--concept", "bogus",
                                                      "--out", str(e.tmp / "p")], "no concept 'bogus'"),
    "pairs_jsonl_nested_too_deep": Case("audit", _deep_pairs_line, "not JSON", early=False),
    "pairs_detector_typo": Case("audit", lambda e: ["pairs", "--preset", "testbed-red", "--model", str(e.model),
                                                    "--detector", "nudenett", "--out", str(e.tmp / "p")],
                                "unknown detector 'nudenett'"),
    "stop_detector_typo": Case("audit", lambda e: e.train("--stop-every", "1", "--stop-detector", "colour:chartreuse"),
                               "unknown colour 'chartreuse'"),
    "ui_model_typo": Case("audit", lambda e: ["ui", "--model", "testbd", "--lora-dir", str(e.tmp / "loras")],
                          "model not found: testbd"),
    "ui_lora_dir_empty": Case("audit", lambda e: ["ui", "--lora-dir", ""], "--lora-dir is empty"),
    # argparse before 3.13 took "-1e-3" for a flag
    "negative_exponent_number": Case("audit", lambda e: e.train("--lr", "-1e-3"), "lr must be a positive number"),
    # the permissions and full-disk audit (non-root user, tmpfs): safetensors' own error class on a full disk
    "disk_full_at_adapter_safetensors_error": Case("audit", _safetensors_enospc, "disk is full", early=False),
    "disk_full_at_checkpoint_safetensors_error": Case("audit", lambda e: _safetensors_enospc(e, "--checkpoint-every",
                                                                                             "1"),
                                                      "disk is full", early=False),
    "checkpoint_dir_read_only": Case("audit", _read_only_checkpoint_dir, "cannot write"),
    # the forty-second stop's audit (2026-12-05)
    "preview_steps_over_the_schedule": Case("audit", lambda e: e.train("--preview-steps", "1001", "--preview-prompts",
                                                                       "a red square"),
                                            "preview_steps must be at most 1000"),
    "pairs_sample_steps_over_the_schedule": Case("audit", lambda e: ["pairs", "--preset", "testbed-red", "--model",
                                                                     str(e.model), "--sample-steps", "1001", "--out",
                                                                     str(e.tmp / "p")],
                                                 "sample_steps must be at most 1000"),
    "pairs_no_sample_steps": Case("audit", lambda e: ["pairs", "--preset", "testbed-red", "--model", str(e.model),
                                                      "--sample-steps", "0", "--out", str(e.tmp / "p")],
                                  "sample_steps and batch_size must be positive"),
    # the forty-fourth stop's (2026-12-05): the retain term's own timestep band
    "retain_band_past_the_schedule": Case("audit", lambda e: e.train("--lam-retain", "1", "--retain-t-min", "2000"),
                                          "need 0 <= retain_t_min < retain_t_max <= 1000"),
    "eval_sample_steps_over_the_schedule": Case("audit", lambda e: ["eval", "--model", str(e.model), "--attacks",
                                                                    "direct", "--sample-steps", "1001", "--out",
                                                                    str(e.tmp / "ev")],
                                                "sample_steps must be at most 1000"),
    "batch_pairs_past_any_card": Case("audit", lambda e: e.train("--batch-pairs", str(2**63 - 1)),
                                      "batch_pairs must be at most 1024"),
    "model_index_a_list": Case("audit", _model_file("model_index.json", b"[1, 2]"), "holds a JSON list"),
    "model_index_class_a_number": Case("audit", _model_file("model_index.json", b'{"_class_name": 5}'),
                                       "_class_name must be the name of a pipeline class"),
    "model_index_not_utf8": Case("audit", _model_file("model_index.json", b'{"_class_name": "\xff"}'),
                                 "is not valid JSON"),
    "model_index_a_folder": Case("audit", _model_file("model_index.json", None),
                                 "is a folder, not a JSON file"),
    "unet_config_not_json": Case("audit", _model_file("unet/config.json", b"{nope"), "is not valid JSON"),
    "ckpt_with_number_keys": Case("audit", _int_keys_ckpt, "holds no state dict"),
    "resume_history_null": Case("audit", _resume_with("history.json", b"null"), "damaged", early=False),
    "resume_state_a_list": Case("audit", _resume_with("state.pt", obj=[1, 2]), "damaged", early=False),
    "out_folders_not_made_for_a_refused_run": Case("audit", lambda e: ["train", "--pairs", str(e.pairs()), "--model",
                                                                       str(e.tmp / "nope"), "--out",
                                                                       str(e.tmp / "new" / "a" / "x.safetensors"),
                                                                       *TRAIN], "model not found"),
    "eval_adapter_that_does_not_fit": Case("audit", _adapter_that_does_not_fit,
                                           "odd.safetensors does not fit this model (RuntimeError: size mismatch for",
                                           early=False, allowed=("ev", "ev/*")),
    # the same stop's second audit: eval, pairs, testbed-train, info
    "pairs_refused_model_leaves_no_folder": Case("audit", lambda e: ["pairs", "--preset", "testbed-red", "--model",
                                                                     str(e.tmp / "nope"), "--num-pairs", "1", "--out",
                                                                     str(e.tmp / "p2" / "sub")], "model not found"),
    "pairs_strength_below_one_step": Case("audit", lambda e: ["pairs", "--preset", "testbed-red", "--model",
                                                              str(e.model), "--strength", "0.01", "--out",
                                                              str(e.tmp / "p3")], "leaves no step to denoise"),
    "pairs_count_past_any_run": Case("audit", lambda e: ["pairs", "--preset", "testbed-red", "--model", str(e.model),
                                                         "--num-pairs", "10000000000", "--out", str(e.tmp / "p4")],
                                     "at most 100000 pairs"),
    "eval_adapter_weight_past_any_slider": Case("audit", lambda e: _eval(e, "--adapter", str(e.tmp / "a.safetensors"),
                                                                         "--adapter-weight", "1e300"),
                                                "adapter_weight must be at most 10"),
    "eval_images_per_prompt_past_any_card": Case("audit", lambda e: _eval(e, "--images-per-prompt", str(10**12)),
                                                 "images_per_prompt must be at most 1024"),
    "eval_detector_none_in_capitals": Case("audit", lambda e: _eval(e, "--detector", "NONE"),
                                           "DSR needs a detector"),
    "eval_ci_on_a_damaged_pair_image": Case("audit", _ci_on_a_damaged_pair_image, "is not a readable image",
                                            early=False, allowed=("ev", "ev/*")),
    "eval_csv_header_past_the_limit": Case("audit", _csv_header_past_the_limit, "is not a readable CSV file",
                                           early=False),
    "info_nested_and_huge_metadata": Case("audit", _nested_metadata, "duo.concept", 0),
    "testbed_train_batch_past_memory": Case("audit", lambda e: ["testbed-train", "--vae-batch", "100000000", "--out",
                                                                str(e.tmp / "tb")], "--vae-batch must be at most"),
    "eval_report_name_is_a_folder": Case("audit", lambda e: (e.tmp / "ev" / "plot.png").mkdir(parents=True) or
                                         _eval(e, "--overwrite"), "plot.png in"),
    "eval_report_appears_during_the_run": Case("audit", _report_appears_during_eval, "appeared in", early=False,
                                               allowed=("ev", "ev/*", "ev-2", "ev-2/*"), check=_other_report_kept),
    "eval_out_inside_the_model": Case("audit", lambda e: _eval(e, "--model", str(_model_copy(e)), "--out",
                                                               str(e.tmp / "model" / "ev")), "inside the model",
                                      early=False),
    "eval_fid_reference_links_outside": Case("audit", _fid_reference_link_outside, "links to a file outside",
                                             early=False),
    "config_is_a_device": Case("audit", lambda e: [*e.train(), "--config", "/dev/null"], "is not a regular file"),
    "info_json_with_nan_metadata": Case("audit", _nan_metadata, '"beta"', 0, check=_json_parses),
    "unlearn_esd_with_duo_extras": Case("audit", lambda e: [*_unlearn(e), "--method", "esd", "--lam-retain", "1"],
                                        "--method esd has no retain set or concept directions; leave out --lam-retain"),
    "out_with_no_name": Case("audit", lambda e: e.train(out=".safetensors"), "--out must end in .safetensors"),
    "checkpoint_dir_inside_the_model": Case("audit", lambda e: ["train", "--pairs", str(e.pairs()), "--model",
                                                                str(_model_copy(e)), "--out",
                                                                str(e.tmp / "out.safetensors"), *TRAIN,
                                                                "--checkpoint-every", "1", "--checkpoint-dir",
                                                                str(e.tmp / "model" / "unet" / "ck")],
                                            "inside the model", early=False),
    "out_taken_while_training": Case("audit", _out_appears_during_training, "appeared while this run worked",
                                     early=False, allowed=("out.safetensors", "out-2.safetensors"),
                                     check=_kept_and_saved_beside),
    "preview_name_is_a_folder": Case("audit", lambda e: (e.tmp / "out.preview.png").mkdir() or
                                     e.train("--preview-prompts", "a red square", "--overwrite"),
                                     "is a folder, and the preview is written under that name"),
}

OUTCOMES: dict[str, dict] = {}


@pytest.mark.parametrize("name", [pytest.param(n, marks=c.mark) if c.mark else n for n, c in CASES.items()])
def test_catalogue(name, tmp_path, model, pair_dir, monkeypatch, capsys, request):
    case = CASES[name]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    env = Env(tmp_path, model, pair_dir, monkeypatch, lambda: request.getfixturevalue("checkpointed"))
    old_umask = os.umask(0o022)
    os.umask(old_umask)
    try:
        argv = case.setup(env)
        capsys.readouterr()
        before = snapshot(tmp_path, model)
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's --help
            code = e.code
        out, err = capsys.readouterr()
        added, removed, changed = diff(before, snapshot(tmp_path, model))
    finally:
        os.umask(old_umask)
        if getattr(env, "lock", None) is not None:
            env.lock.close()
    rel = {str(p): str(Path(p).relative_to(tmp_path)) if str(p).startswith(str(tmp_path)) else str(p)
           for p in added | removed | changed}
    unintended = sorted(rel[p] for p in added | changed if not any(fnmatch.fnmatch(rel[p], g) for g in case.allowed))
    errors = [ln for ln in err.splitlines() if ln.startswith(PREFIX)]
    OUTCOMES[name] = {"section": case.section, "code": code, "traceback": "Traceback" in err,
                      "partial": bool(unintended), "lost": sorted(rel[p] for p in removed),
                      "clear": code == case.code and (len(errors) == 1 if case.code else not errors)}
    assert "Traceback" not in err, err
    assert not removed, f"files lost: {sorted(rel[p] for p in removed)}"
    assert not unintended, f"files left or changed: {unintended}"
    if case.code == 2:
        assert code == 2, (code, err[-2000:])
        assert len(errors) == 1, err[-2000:]
        assert case.expect in errors[0], errors[0]
        assert err.strip().splitlines()[-1] == errors[0]
        if case.early:
            assert err.strip() == errors[0], err
    else:
        assert code == case.code, (code, err[-2000:])
        assert not errors, err
        assert case.expect in out, out[-2000:]
    if case.check:
        case.check(env, out, err)


@pytest.mark.parametrize("setup", [_abs_path, _dotdot_path, _symlink], ids=["absolute", "dotdot", "symlink"])
def test_outside_paths_tell_nothing(setup, tmp_path, model, pair_dir, monkeypatch, capsys):
    """The refusal reads the same whether the outside file exists or not, and nothing outside is opened."""
    import builtins
    import io

    import PIL.Image

    messages = {}
    for exists in (True, False):
        work = tmp_path / ("a" if exists else "b")
        work.mkdir()
        env = Env(work, model, pair_dir, monkeypatch, lambda: None)
        argv = setup(env, exists)
        opened: list[str] = []

        def spy(fn):
            def wrapper(file, *a, **k):
                if isinstance(file, (str, os.PathLike)):
                    opened.append(os.path.realpath(file))
                return fn(file, *a, **k)
            return wrapper
        with monkeypatch.context() as m:
            m.setattr(builtins, "open", spy(builtins.open))
            m.setattr(io, "open", spy(io.open))
            m.setattr(os, "open", spy(os.open))
            m.setattr(PIL.Image, "open", spy(PIL.Image.open))
            capsys.readouterr()
            assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        outside = str((work / "outside").resolve())
        assert not [p for p in opened if p.startswith(outside)], opened
        messages[exists] = err.replace(str(work), "<tmp>")
    assert messages[True] == messages[False]
    assert len(messages[True].splitlines()) == 1 and messages[True].startswith(PREFIX)


def test_catalogue_counts():
    """The catalogue's size and counts (run the whole file to see them: pytest -s tests/test_reliability.py)."""
    if not OUTCOMES:
        pytest.skip("no catalogue case ran in this session")
    counts = {
        "cases": len(CASES), "ran": len(OUTCOMES),
        "clear (intended exit code, one error line)": sum(o["clear"] for o in OUTCOMES.values()),
        "tracebacks": sum(o["traceback"] for o in OUTCOMES.values()),
        "partial or unintended files": sum(o["partial"] for o in OUTCOMES.values()),
        "data lost": sum(bool(o["lost"]) for o in OUTCOMES.values()),
    }
    by_section: dict[str, int] = {}
    for c in CASES.values():
        by_section[c.section] = by_section.get(c.section, 0) + 1
    print(f"\nreliability catalogue: {json.dumps(counts)}\nper section: {json.dumps(by_section)}")
    assert counts["cases"] == sum(by_section.values())


def test_ui_on_a_taken_port_says_so(tmp_path, capsys):
    """gradio's own error is a traceback about launch() and environment variables."""
    import socket

    from duo_unlearn.extension.app import serve
    from duo_unlearn.trainer.errors import UserError

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        try:
            with pytest.raises(UserError, match=f"{port} is taken by another program; choose another --port"):
                serve(port=port, lora_dir=tmp_path / "loras", block=False)
        finally:
            import gradio

            gradio.close_all()
