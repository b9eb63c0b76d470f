"""A full disk or a folder that refuses writes part way: what was there stays whole, nothing half-written is left,
and the user gets one line. Found by running the CLI as a non-root user on tiny tmpfs mounts; simulated here (the
suite runs as root, where permission bits do not stop writes)."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from duo_unlearn.trainer import atomic, pairs
from duo_unlearn.trainer.errors import UserError
from duo_unlearn.trainer.models import load_model
from duo_unlearn.trainer.pair_dataset import read_pairs
from duo_unlearn.trainer.pairs import PairConfig, generate_pairs


def _safetensors_full_disk(*_args, **_kwargs):
    import safetensors

    raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def test_a_library_error_around_an_os_error_is_one_line(tmp_path):
    target = tmp_path / "a.safetensors"
    target.write_bytes(b"the user's adapter")
    with pytest.raises(UserError, match="the disk is full: could not write"):
        atomic.write_atomic(target, _safetensors_full_disk)
    assert target.read_bytes() == b"the user's adapter"
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]  # no temp file left
    with pytest.raises(ValueError, match="not an I/O error"):  # anything else is not dressed up as a disk error
        atomic.write_atomic(target, lambda tmp: (_ for _ in ()).throw(ValueError("not an I/O error")))


def test_a_full_disk_while_a_folder_is_written_leaves_no_folder(tmp_path):
    with pytest.raises(UserError, match="the disk is full"):
        with atomic.atomic_dir(tmp_path / "step-000001") as tmp:
            (tmp / "state.pt").write_bytes(b"x")
            _safetensors_full_disk()
    assert list(tmp_path.iterdir()) == []


def test_testbed_train_keeps_the_old_model_when_saving_fails(tmp_path):
    from duo_unlearn.trainer.testbed.train import output_folder

    old = tmp_path / "model"
    old.mkdir()
    (old / "model_index.json").write_text("{}")
    with pytest.raises(UserError, match="the disk is full"):
        with output_folder(old, overwrite=True) as staging:
            (staging / "unet").mkdir()
            _safetensors_full_disk()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert (old / "model_index.json").read_text() == "{}"


def test_remove_tree_empties_a_folder_it_was_refused(tmp_path, monkeypatch):
    """A copied model with a read-only folder: unlinking its files is refused until the folder is writable again."""
    tree = tmp_path / "previous" / "vae"
    tree.mkdir(parents=True)
    (tree / "config.json").write_text("{}")
    real_unlink, refused = os.unlink, []

    def unlink(path, *a, **k):
        if str(path).endswith("config.json") and not refused:
            refused.append(path)
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_unlink(path, *a, **k)
    monkeypatch.setattr(os, "unlink", unlink)
    assert atomic.remove_tree(tmp_path / "previous")
    assert refused and not (tmp_path / "previous").exists()


def test_staged_files_all_or_none(tmp_path):
    (tmp_path / "report.json").write_text("old report")
    (tmp_path / "grid_direct.png").write_text("old grid")
    with pytest.raises(RuntimeError):
        with atomic.staged_files(tmp_path) as stage:
            (stage / "grid_direct.png").write_text("new grid")
            raise RuntimeError("the plot failed")
    assert (tmp_path / "grid_direct.png").read_text() == "old grid"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid_direct.png", "report.json"]
    with atomic.staged_files(tmp_path) as stage:
        (stage / "grid_direct.png").write_text("new grid")
        (stage / "report.json").write_text("new report")
    assert (tmp_path / "grid_direct.png").read_text() == "new grid"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid_direct.png", "report.json"]


@pytest.mark.parametrize("fails", ["write", "fsync"])
def test_an_index_append_that_fails_is_cut_back(tmp_path, monkeypatch, fails):
    """The disk fills after part of the block is on it (write), or when it is flushed (fsync)."""
    index = tmp_path / "pairs.jsonl"
    index.write_text('{"id": "00000"}\n')
    real_write = os.write

    def write(fd, data):
        if len(data) > 10:
            return real_write(fd, bytes(data[:10]))
        raise OSError(errno.ENOSPC, "No space left on device")

    def fsync(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(pairs.os, fails, {"write": write, "fsync": fsync}[fails])
    with pytest.raises(UserError, match="the disk is full: could not write .*pairs.jsonl"):
        pairs._append_lines(index, ['{"id": "00001"}', '{"id": "00002"}'])
    assert index.read_text() == '{"id": "00000"}\n'


def _cfg(out, model):
    return PairConfig(out=str(out), model=str(model), unsafe_prompts=("a red square",),
                      safe_prompts=("a blue square",), num_pairs=4, batch_size=4, sample_steps=2, seed=3)


def test_a_torn_block_is_completed_without_duplicates(tmp_path, tiny_model):
    """A full disk tore the index inside a block: the rerun makes the block again and adds only what is missing."""
    model = load_model(tiny_model)
    folder = tmp_path / "p"
    generate_pairs(_cfg(folder, tiny_model), model=model)
    lines = (folder / "pairs.jsonl").read_text().splitlines(keepends=True)
    assert len(lines) == 4
    (folder / "pairs.jsonl").write_text("".join(lines[:2]) + lines[2][:20])
    stats = generate_pairs(_cfg(folder, tiny_model), model=model)
    assert stats.kept_existing == 2 and stats.made == 2
    assert (folder / "pairs.jsonl").read_text() == "".join(lines)
    assert [r.id for r in read_pairs(folder)] == ["00000", "00001", "00002", "00003"]
    assert json.loads(lines[3])["id"] == "00003"


def test_a_trained_test_bed_is_readable_like_any_file(tmp_path):
    """safetensors writes 0600 whatever the umask; the finished model folder follows the umask instead."""
    from duo_unlearn.trainer.testbed.train import output_folder

    old = os.umask(0o022)
    try:
        with output_folder(tmp_path / "model", overwrite=False) as staging:
            (staging / "unet").mkdir()
            weights = staging / "unet" / "diffusion_pytorch_model.safetensors"
            weights.write_bytes(b"weights")
            os.chmod(weights, 0o600)
    finally:
        os.umask(old)
    done = tmp_path / "model"
    assert oct(os.stat(done / "unet" / "diffusion_pytorch_model.safetensors").st_mode & 0o777) == "0o644"
    assert oct(os.stat(done / "unet").st_mode & 0o777) == "0o755"
    assert oct(os.stat(done).st_mode & 0o777) == "0o755"


def test_a_folder_to_be_made_is_probed_where_it_would_be_made(tmp_path, monkeypatch):
    """The check makes nothing: a run refused later (an unreadable input) leaves no empty report folder behind."""
    import tempfile

    atomic.check_folder_writable(tmp_path / "report" / "inner")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is a file, not a folder"):
        atomic.check_folder_writable(tmp_path / "notes.txt" / "report")
    real = tempfile.mkstemp

    def refused(*a, dir=None, **k):
        if Path(dir) == tmp_path:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*a, dir=dir, **k)
    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(UserError, match=f"cannot write {tmp_path}: Permission denied"):
        atomic.check_folder_writable(tmp_path / "report")


@pytest.mark.parametrize("links", [True, False], ids=["hard links", "no hard links (FAT, some shares)"])
def test_a_file_that_appeared_meanwhile_is_kept_without_replace(tmp_path, monkeypatch, links):
    """replace=False: a free name is taken; a name someone else took since the check keeps their file, and the new
    one goes to the next free name, which the error says."""
    if not links:
        def no_link(*a, **k):
            raise OSError(errno.EPERM, "Operation not permitted")
        monkeypatch.setattr(os, "link", no_link)
    free = atomic.write_text_atomic  # replace=True is the default, as before
    atomic.write_atomic(tmp_path / "a.txt", lambda p: p.write_text("new"), replace=False)
    assert (tmp_path / "a.txt").read_text() == "new"
    (tmp_path / "b.txt").write_text("theirs")
    (tmp_path / "b-2.txt").write_text("theirs too")
    with pytest.raises(UserError, match=r"b.txt appeared while this run worked; .*saved as .*b-3.txt"):
        atomic.write_atomic(tmp_path / "b.txt", lambda p: p.write_text("new"), replace=False)
    assert (tmp_path / "b.txt").read_text() == "theirs" and (tmp_path / "b-2.txt").read_text() == "theirs too"
    assert (tmp_path / "b-3.txt").read_text() == "new"
    free(tmp_path / "b.txt", "replaced")
    assert (tmp_path / "b.txt").read_text() == "replaced"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b-2.txt", "b-3.txt", "b.txt"]  # no temp left
