"""`duo-unlearn testbed-train` with bad input: one line, exit code 2, before any training, and nothing of the
user's touched. Refusals come before training, so these are fast; one test trains for real, with the smallest
settings."""
import os
import time
from pathlib import Path

import pytest

from duo_unlearn.trainer.cli import main as cli_main
from duo_unlearn.trainer.testbed import train

TINY = ["--images", "16", "--vae-steps", "1", "--vae-batch", "4", "--unet-steps", "1", "--unet-batch", "4",
        "--eval-every", "0"]


def _refused(capsys, args: list[str], prefix: str = "duo-unlearn: error: ") -> str:
    """Runs the CLI; returns its one line on stderr after checking the exit code. argparse's refusals exit
    through SystemExit (the CLI does not catch it), the others return 2."""
    try:
        code = cli_main(["testbed-train", *args])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(prefix) and "Traceback" not in err, err
    return err


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".partial", ".old")))


@pytest.mark.parametrize("args, flag", [
    (["--images", "0"], "--images"),
    (["--vae-batch", "0"], "--vae-batch"),
    (["--unet-batch", "0"], "--unet-batch"),
    (["--unet-batch", "-4"], "--unet-batch"),
    (["--vae-steps", "-1"], "--vae-steps"),
    (["--unet-steps", "0"], "--unet-steps"),
    (["--log-every", "0"], "--log-every"),
    (["--vae-lr", "nan"], "--vae-lr"),
    (["--vae-lr", "inf"], "--vae-lr"),
    (["--vae-lr", "-0.001"], "--vae-lr"),
    (["--vae-lr", "-1e-3"], "--vae-lr"),  # not read as a flag
    (["--images", "1000000"], "--images must be at most"),
    (["--family", "sd3", "--images", "400000"], "--images must be at most"),
    (["--unet-lr", "0"], "--unet-lr"),
    (["--kl-weight", "-1"], "--kl-weight"),
    (["--warmup", "-1"], "--warmup"),
    (["--ema-decay", "2"], "--ema-decay"),
    (["--ema-decay", "1"], "--ema-decay"),
    (["--ema-decay", "-0.1"], "--ema-decay"),
    (["--ema-decay", "nan"], "--ema-decay"),
    (["--eval-every", "-1"], "--eval-every"),
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2**64)], "--seed"),
    (["--family", "sdxl", "--batch", "0"], "--batch"),
    (["--family", "sdxl", "--images", "-1"], "--images"),
    (["--family", "sd3", "--steps", "-1"], "--steps"),
    (["--family", "sd3", "--lr", "nan"], "--lr"),
    (["--family", "sd3", "--text-lr", "-1"], "--text-lr"),
    (["--family", "sd3", "--minutes", "inf"], "--minutes"),
    (["--family", "sdxl", "--threads", "-2"], "--threads"),
    (["--family", "sdxl", "--log-every", "0"], "--log-every"),
    (["--family", "sdxl", "--ema-decay", "1.5"], "--ema-decay"),
    (["--family", "sd3", "--t5-lengths", "77,,256"], "--t5-lengths"),
    (["--family", "sd3", "--t5-lengths", "0"], "--t5-lengths"),
])
def test_out_of_range_settings_are_refused_before_anything_is_written(tmp_path, capsys, args, flag):
    err = _refused(capsys, [*args, "--out", str(tmp_path / "m")])
    assert flag in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, words", [
    (["--seed", "abc"], ["--seed", "'abc'"]),
    (["--images", "1.5"], ["--images"]),
    (["--family", "sd9"], ["'sd1'", "'sdxl'", "'sd3'"]),
    (["--family"], ["--family"]),
    (["--no-such-flag"], ["--no-such-flag"]),
    (["--family", "sdxl", "--steps", "x"], ["--steps"]),
    (["--family", "sd3", "--vae-steps", "1"], ["--vae-steps"]),
])
def test_flag_errors_are_one_line(tmp_path, capsys, args, words):
    err = _refused(capsys, [*args, "--out", str(tmp_path / "m")], prefix="duo-unlearn: error: ")
    assert all(w in err for w in words), err
    assert list(tmp_path.iterdir()) == []


def test_help_still_shows_the_flags(capsys):
    with pytest.raises(SystemExit) as e:
        train.main(["--help"])
    assert e.value.code == 0 and "--overwrite" in capsys.readouterr().out


def _users_folder(tmp_path: Path) -> Path:
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    (mine / "sub" / "data.bin").write_bytes(b"\x00\x01")
    return mine


@pytest.mark.parametrize("family", [[], ["--family", "sdxl"]])
def test_a_folder_holding_files_is_refused_without_overwrite(tmp_path, capsys, family):
    mine = _users_folder(tmp_path)
    before = _snapshot(mine)
    err = _refused(capsys, [*family, "--out", str(mine), *TINY[:2]])
    assert "--overwrite" in err
    assert _snapshot(mine) == before and _leftovers(tmp_path) == []


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_file_is_never_replaced_by_the_model_folder(tmp_path, capsys, overwrite):
    target = tmp_path / "file.txt"
    target.write_text("my file")
    _refused(capsys, ["--out", str(target), *overwrite, *TINY])
    assert target.read_text() == "my file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_an_output_that_cannot_be_made_is_one_line(tmp_path, capsys):
    (tmp_path / "file.txt").write_text("my file")
    _refused(capsys, ["--out", str(tmp_path / "file.txt" / "model"), *TINY])
    assert (tmp_path / "file.txt").read_text() == "my file"
    if Path("/proc/self").exists():
        _refused(capsys, ["--out", "/proc/tt", *TINY])


def _fake_training(marker: str, fail: BaseException | None = None):
    def run(staging: Path, cfg, log):
        (staging / "model_index.json").write_text(marker)
        if fail is not None:
            raise fail
        return time.time()
    return run


@pytest.mark.parametrize("failure", [RuntimeError("boom"), KeyboardInterrupt()])
def test_a_failed_run_leaves_the_old_folder_and_no_partial(tmp_path, monkeypatch, failure):
    mine = _users_folder(tmp_path)
    before = _snapshot(mine)
    monkeypatch.setattr(train, "_train_into", _fake_training("new", fail=failure))
    with pytest.raises(type(failure)):
        train.main(["--out", str(mine), "--overwrite"])
    assert _snapshot(mine) == before and _leftovers(tmp_path) == []


def test_overwrite_replaces_the_folder_and_touches_nothing_beside_it(tmp_path, monkeypatch):
    mine = _users_folder(tmp_path)
    for name in ("mine.old", "mine.partial"):  # the user's, not leftovers of ours
        (tmp_path / name).mkdir()
        (tmp_path / name / "x").write_text(name)
    monkeypatch.setattr(train, "_train_into", _fake_training("new"))
    assert train.main(["--out", str(mine), "--overwrite"]) == 0
    assert _snapshot(mine) == {"model_index.json": b"new"}
    assert sorted(os.listdir(tmp_path)) == ["mine", "mine.old", "mine.partial"]
    assert [(tmp_path / n / "x").read_text() for n in ("mine.old", "mine.partial")] == ["mine.old", "mine.partial"]


def test_an_empty_folder_is_filled_without_overwrite(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(train, "_train_into", _fake_training("new"))
    assert train.main(["--out", str(tmp_path / "empty")]) == 0
    assert _snapshot(tmp_path / "empty") == {"model_index.json": b"new"} and _leftovers(tmp_path) == []


def test_a_real_run_with_overwrite_puts_a_loadable_model_in_place(tmp_path, capsys):
    from diffusers import StableDiffusionPipeline

    mine = _users_folder(tmp_path)
    assert cli_main(["testbed-train", "--out", str(mine), "--overwrite", *TINY]) == 0
    assert not (mine / "notes.txt").exists() and (mine / "training_log.json").exists()
    assert sorted(os.listdir(tmp_path)) == ["mine"]
    StableDiffusionPipeline.from_pretrained(str(mine), local_files_only=True)
