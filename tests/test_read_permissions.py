"""A file this user may not read is said to be unreadable (permission denied), by name: never damaged (with advice to
delete it), never missing (safetensors' own wording), never a traceback later on.

CI runs as root, where chmod 000 stops no read, so `deny` simulates it the way each library reports a refused read:
os.access says no, Python's open raises PermissionError (EACCES), and safetensors' safe_open raises
FileNotFoundError("No such file or directory: …") as its Rust side does for any file it cannot open. A real chmod
variant runs where the tests do not run as root.
"""
from __future__ import annotations

import builtins
import errno
import io
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from duo_unlearn.trainer.cli import main
from duo_unlearn.trainer.errors import UserError, unreadable

SD1_KEYS = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
            "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(1)}
ROOT = os.geteuid() == 0
REAL_OPEN = builtins.open
WRONG = ("delete", "damaged", "No such file", "not a safetensors", "weights-only")


def _key(path) -> str | None:
    return os.path.abspath(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else None


@pytest.fixture
def deny(monkeypatch):
    """deny(path, ...): reads of these files (or folders) fail as they do for a user without read permission."""
    import safetensors
    import safetensors.torch
    import transformers.modeling_utils

    denied: set[str] = set()
    real_access, real_open = os.access, builtins.open

    def access(path, mode, *args, **kwargs):
        return False if _key(path) in denied else real_access(path, mode, *args, **kwargs)

    def open_(file, *args, **kwargs):
        if _key(file) in denied:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    def refusing(real):
        def safe_open(filename, *args, **kwargs):
            if _key(filename) in denied:
                raise FileNotFoundError(f"No such file or directory: {filename}")
            return real(filename, *args, **kwargs)
        return safe_open

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)  # pathlib's read_text opens through io.open
    for module in (safetensors, safetensors.torch, transformers.modeling_utils):
        monkeypatch.setattr(module, "safe_open", refusing(module.safe_open))

    def add(*paths):
        denied.update(_key(p) for p in paths)
    return add


def assert_says_unreadable(message: str, path: Path) -> None:
    assert message == f"cannot read {path}: permission denied", message
    assert "\n" not in message and not any(w in message for w in WRONG), message


def cli_error(argv: list[str], capsys) -> str:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("duo-unlearn: error: ") and err.count("duo-unlearn: error:") == 1, err
    return last.removeprefix("duo-unlearn: error: ")


# -- fixtures: a tiny model (random weights), a checkpoint folder an interrupted run left, a single-file stand-in --

@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    from tiny_models import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("perm_model"), pretrain_steps=0)


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory, model, pair_dir) -> Path:
    """A 4-step run at rank 2 with a checkpoint every step (the last at step 3), kept as an interrupted run keeps them."""
    from tiny_models import interrupted_run

    root = tmp_path_factory.mktemp("perm_ckpt")
    assert (interrupted_run(root, model, pair_dir, every=1) / "step-000003" / "state.pt").exists()
    return root


def sd1_file(folder: Path, suffix: str) -> Path:
    """SD 1.x key names (the family is read from them) without the weights of a whole model."""
    path = folder / f"sd15{suffix}"
    if suffix == ".safetensors":
        save_file(SD1_KEYS, str(path))
    else:
        torch.save({"state_dict": SD1_KEYS}, path)
    return path


# -- the helper --

def test_unreadable_is_a_file_that_is_there_but_refused(tmp_path, deny):
    there, absent = tmp_path / "a.bin", tmp_path / "nothing.bin"
    there.write_bytes(b"x")
    assert not unreadable(there) and not unreadable(absent)
    deny(there)
    assert unreadable(there) and not unreadable(absent)


@pytest.mark.skipif(ROOT, reason="chmod 000 does not stop root's reads")
def test_unreadable_sees_a_real_chmod(tmp_path):
    f, folder = tmp_path / "a.bin", tmp_path / "sub"
    f.write_bytes(b"x")
    folder.mkdir()
    (folder / "b.bin").write_bytes(b"x")
    f.chmod(0)
    folder.chmod(0)
    try:
        assert unreadable(f) and unreadable(folder) and unreadable(folder / "b.bin")
    finally:
        f.chmod(0o644)
        folder.chmod(0o755)


# -- F4: a checkpoint file that cannot be read is not damage, and must not be deleted --

@pytest.mark.parametrize("name", ["state.pt", "lora.safetensors", "history.json"])
def test_resume_from_an_unreadable_checkpoint_file_says_so(name, tmp_path, checkpointed, model, pair_dir, deny,
                                                          capsys):
    ck = tmp_path / "ck"
    shutil.copytree(checkpointed / "ck", ck)
    target = ck / "step-000003" / name
    deny(target)
    message = cli_error(["train", "--pairs", str(pair_dir), "--model", str(model), "--out",
                         str(tmp_path / "a.safetensors"), "--steps", "4", "--rank", "2", "--batch-pairs", "2",
                         "--checkpoint-every", "1", "--resume", "--checkpoint-dir", str(ck)], capsys)
    assert_says_unreadable(message, target)
    assert target.exists() and not (tmp_path / "a.safetensors").exists()


def test_a_refused_read_inside_the_load_is_said_too(tmp_path, checkpointed, deny, monkeypatch):
    """The check before the load can pass and the read still be refused (permissions changed in between): the
    PermissionError torch raises is mapped, not called damage."""
    from duo_unlearn.trainer.checkpoints import CheckpointFolder

    ck = tmp_path / "ck"
    shutil.copytree(checkpointed / "ck", ck)
    target = ck / "step-000003" / "state.pt"
    deny(target)
    monkeypatch.setattr(os, "access", lambda *a, **k: True)  # what the check before the load saw
    with pytest.raises(UserError) as e:
        CheckpointFolder(ck).load_newest(None, None, None, {}, 10)
    assert_says_unreadable(str(e.value), target)


# -- F8: model files --

@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_an_unreadable_single_file_model_says_so(suffix, tmp_path, pair_dir, deny, capsys):
    path = sd1_file(tmp_path, suffix)
    deny(path)
    message = cli_error(["train", "--pairs", str(pair_dir), "--model", str(path), "--out",
                         str(tmp_path / "o.safetensors")], capsys)
    assert_says_unreadable(message, path)


def test_an_unreadable_file_in_a_diffusers_folder_is_named(tmp_path, model, deny):
    from duo_unlearn.trainer.models import load_model

    folder = tmp_path / "model"
    shutil.copytree(model, folder)
    target = folder / "text_encoder" / "model.safetensors"
    deny(target)
    with pytest.raises(UserError) as e:
        load_model(folder)
    assert_says_unreadable(str(e.value), target)


# -- F8: adapters (info, eval --adapter, the ComfyUI info node) --

@pytest.fixture
def adapter(tmp_path) -> Path:
    path = tmp_path / "a.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 4)}, str(path), metadata={"duo.rank": "2"})
    return path


def test_info_on_an_unreadable_adapter_says_so(adapter, deny, capsys):
    deny(adapter)
    assert_says_unreadable(cli_error(["info", str(adapter)], capsys), adapter)


@pytest.mark.parametrize("reader", ["read_metadata", "read_adapter", "describe_adapter"])
def test_adapter_readers_say_unreadable_not_missing(reader, adapter, deny, monkeypatch):
    """Only safetensors refuses here (the header read by Python passed): its "No such file" is not repeated."""
    from duo_unlearn.trainer import export

    deny(adapter)
    monkeypatch.setattr(builtins, "open", REAL_OPEN)  # Python's own open still reads it
    monkeypatch.setattr(io, "open", REAL_OPEN)
    if reader != "read_metadata":
        monkeypatch.setattr(export, "read_metadata", lambda path: {})
    with pytest.raises(UserError) as e:
        getattr(export, reader)(adapter)
    assert_says_unreadable(str(e.value), adapter)


@pytest.mark.skipif(ROOT, reason="chmod 000 does not stop root's reads")
def test_info_on_a_real_chmod_000_adapter(adapter, capsys):
    adapter.chmod(0)
    try:
        assert_says_unreadable(cli_error(["info", str(adapter)], capsys), adapter)
    finally:
        adapter.chmod(0o644)


# -- F5: a single file's --config-dir with an unusable tokenizer folder is refused at load time --

@pytest.fixture
def config_dir(tmp_path, model) -> Path:
    """The tiny model's configs and tokenizer, without weights: what --config-dir is for."""
    folder = tmp_path / "cfg"
    shutil.copytree(model, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    return folder


def test_config_dir_with_an_unreadable_tokenizer_folder(tmp_path, config_dir, deny):
    from duo_unlearn.trainer.models import load_model

    deny(config_dir / "tokenizer")
    with pytest.raises(UserError) as e:
        load_model(sd1_file(tmp_path, ".safetensors"), config_dir=config_dir)
    assert_says_unreadable(str(e.value), config_dir / "tokenizer")


def test_config_dir_with_an_unreadable_tokenizer_file(tmp_path, config_dir, deny):
    from duo_unlearn.trainer.models import load_model

    target = sorted((config_dir / "tokenizer").iterdir())[0]
    deny(target)
    with pytest.raises(UserError) as e:
        load_model(sd1_file(tmp_path, ".safetensors"), config_dir=config_dir)
    assert_says_unreadable(str(e.value), target)


def test_config_dir_with_an_empty_tokenizer_folder(tmp_path, config_dir):
    from duo_unlearn.trainer.models import load_model

    shutil.rmtree(config_dir / "tokenizer")
    (config_dir / "tokenizer").mkdir()
    with pytest.raises(UserError) as e:
        load_model(sd1_file(tmp_path, ".safetensors"), config_dir=config_dir)
    message = str(e.value)
    assert message == (f"--config-dir {config_dir} has no tokenizer files in {config_dir / 'tokenizer'}: copy the "
                       "tokenizer/ folder of the model's diffusers repository there")


def _single_file_reads_only_the_tokenizer(monkeypatch):
    """from_single_file as diffusers does it for the tokenizer (from --config-dir), the rest left out."""
    from types import SimpleNamespace

    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    def fake(cls, path, config=None, **kwargs):
        return SimpleNamespace(tokenizer=CLIPTokenizer.from_pretrained(config, subfolder="tokenizer",
                                                                       local_files_only=True))
    monkeypatch.setattr(StableDiffusionPipeline, "from_single_file", classmethod(fake))


def test_config_dir_whose_tokenizer_has_no_vocabulary(tmp_path, config_dir, monkeypatch):
    """A folder of files that are not a tokenizer's: transformers builds one with only its special tokens and a
    1e30 model_max_length, which failed as an OverflowError at the first prompt. A real tokenizer still loads."""
    from duo_unlearn.trainer.families import get_family
    from duo_unlearn.trainer.models import _load_single_file

    _single_file_reads_only_the_tokenizer(monkeypatch)
    path = sd1_file(tmp_path, ".safetensors")
    assert len(_load_single_file(path, config_dir, torch.float32, get_family("sd1"), {}).tokenizer) > 2
    shutil.rmtree(config_dir / "tokenizer")
    (config_dir / "tokenizer").mkdir()
    (config_dir / "tokenizer" / "README.md").write_text("tokenizer files go here\n")
    with pytest.raises(UserError) as e:
        _load_single_file(path, config_dir, torch.float32, get_family("sd1"), {})
    assert str(e.value) == (f"--config-dir {config_dir}: the tokenizer in {config_dir / 'tokenizer'} has no "
                            "vocabulary; copy the tokenizer/ folder of the model's diffusers repository there")


# -- F6: a single file with a full model's key names but not all its weights --

def test_single_file_missing_a_component_says_which(tmp_path, config_dir, pair_dir, capsys):
    path = sd1_file(tmp_path, ".safetensors")
    message = cli_error(["train", "--pairs", str(pair_dir), "--model", str(path), "--config-dir", str(config_dir),
                         "--out", str(tmp_path / "o.safetensors")], capsys)
    assert message == (f"{path.name} is missing parts of a full model: the text_encoder (CLIPTextModel) weights are "
                       "not in it; give a checkpoint that holds the whole model (UNet, VAE and text encoders), or its "
                       "diffusers folder")
