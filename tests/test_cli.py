import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from duo_unlearn.trainer.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture()
def empty_pairs(tmp_path):
    d = tmp_path / "empty"
    (d / "unsafe").mkdir(parents=True)
    (d / "safe").mkdir()
    (d / "pairs.jsonl").write_text("")
    return d


@pytest.fixture()
def not_a_model(tmp_path):
    path = tmp_path / "weird.safetensors"
    save_file({"some.random.key": torch.zeros(2)}, str(path))
    return path


@pytest.mark.parametrize("case", ["missing_model", "missing_pairs", "empty_pairs", "beta", "steps", "unwritable",
                                  "family", "refiner", "unet_only", "bad_toml", "unknown_toml_key",
                                  "not_safetensors_out"])
def test_bad_input_gives_one_line_exit_2_and_no_file(case, capsys, tmp_path, tiny_model, pair_dir, empty_pairs,
                                                      not_a_model):
    out = tmp_path / "out.safetensors"
    args = ["train", "--pairs", str(pair_dir), "--model", str(tiny_model), "--out", str(out), "--steps", "2"]
    expect = {
        "missing_model": "model not found", "missing_pairs": "pairs folder not found", "empty_pairs": "holds no pairs",
        "beta": "beta must be a positive number", "steps": "steps must be a positive number",
        "unwritable": "cannot write", "family": "unknown model family", "bad_toml": "not valid TOML",
        "refiner": "sd_xl_refiner_1.0.safetensors is an SDXL refiner", "unet_only": "holds only a UNet",
        "unknown_toml_key": "unknown setting(s) betta", "not_safetensors_out": "must end in .safetensors",
    }[case]
    if case == "missing_model":
        args[4] = str(tmp_path / "nope")
    elif case == "missing_pairs":
        args[2] = str(tmp_path / "nope")
    elif case == "empty_pairs":
        args[2] = str(empty_pairs)
    elif case == "beta":
        args += ["--beta", "-1"]
    elif case == "steps":
        args[-1] = "0"
    elif case == "unwritable":
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "out.safetensors"
        args[6] = str(out)
    elif case == "family":
        args[4] = str(not_a_model)
    elif case in ("refiner", "unet_only"):  # single files that are not a full base model: told from the key names
        keys = (["conditioner.embedders.0.model.transformer.resblocks.0.attn.in_proj_weight"] if case == "refiner"
                else ["model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.label_emb.0.0.weight"])
        args[4] = str(tmp_path / ("sd_xl_refiner_1.0.safetensors" if case == "refiner" else "xl_unet.safetensors"))
        save_file({k: torch.zeros(1) for k in keys}, args[4])
    elif case in ("bad_toml", "unknown_toml_key"):
        cfg = tmp_path / "c.toml"
        cfg.write_text("beta = [" if case == "bad_toml" else "betta = 3\n")
        args += ["--config", str(cfg)]
    elif case == "not_safetensors_out":
        out = tmp_path / "out.ckpt"
        args[6] = str(out)
    code, stdout, err = _run(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("duo-unlearn: error:") and expect in lines[0], err
    assert "Traceback" not in err
    assert not out.exists()
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_toml_config_and_flags(capsys, tmp_path, tiny_model, pair_dir):
    out = tmp_path / "cfg.safetensors"
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'pairs = "{pair_dir}"\nmodel = "{tiny_model}"\nout = "{out}"\nsteps = 50\nbeta = 800\n'
                   f'concept = "red"\n[lora]\nrank = 4\nalpha = 2\n')
    code, stdout, err = _run(capsys, "train", "--config", str(cfg), "--steps", "3")  # the flag wins over the file
    assert code == 0, err
    code, stdout, err = _run(capsys, "info", str(out), "--json")
    info = json.loads(stdout)
    assert info["duo"]["steps"] == 3 and info["duo"]["beta"] == 800 and info["duo"]["concept"] == "red"
    assert info["metadata"]["ss_network_dim"] == "4" and info["metadata"]["ss_network_alpha"] == "2.0"
    assert info["duo"]["lr"] == pytest.approx(3e-4 * 100 / 800) and info["duo"]["lambda"] == pytest.approx(1e6 * 8)
    code, stdout, err = _run(capsys, "info", str(out))
    assert code == 0 and "duo.concept: red" in stdout and "ss_network_module: networks.lora" in stdout


def test_unlearn_reads_a_config_file_and_flags_win(capsys, tmp_path, monkeypatch):
    from duo_unlearn.trainer import unlearn as unlearn_module

    seen = []
    monkeypatch.setattr(unlearn_module, "unlearn", lambda cfg, progress=None: seen.append(cfg) or [])
    cfg = tmp_path / "run.toml"
    cfg.write_text('twin_negative = "red"\nsteps = 50\nunsafe_prompts = ["a red square"]\n')
    out = str(tmp_path / "a.safetensors")
    code, _, err = _run(capsys, "unlearn", "--config", str(cfg), "--steps", "3", "--out", out)
    assert code == 0, err
    assert (seen[0].twin_negative, seen[0].steps, seen[0].unsafe_prompts) == ("red", 3, ("a red square",))
    cfg.write_text("twin_negative = 3\n")
    code, _, err = _run(capsys, "unlearn", "--config", str(cfg), "--out", out)
    assert code == 2 and err.strip().splitlines() == ["duo-unlearn: error: config: twin_negative must be a string, "
                                                      "got 3"]
    assert len(seen) == 1


def test_a_shortened_flag_is_refused_not_taken_for_a_longer_one(capsys, tmp_path):
    # "--config" on a command that had none used to be read as --config-dir, and the file was never read
    with pytest.raises(SystemExit) as stop:
        main(["pairs", "--config", "x.toml", "--out", str(tmp_path / "p")])
    assert stop.value.code == 2 and "unrecognized arguments: --config x.toml" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_info_on_missing_or_wrong_file(capsys, tmp_path):
    code, _, err = _run(capsys, "info", str(tmp_path / "none.safetensors"))
    assert code == 2 and "adapter not found" in err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    code, _, err = _run(capsys, "info", str(bad))
    assert code == 2 and "not a safetensors file" in err and "Traceback" not in err


def test_console_script_help_and_error_exit_code(tmp_path):
    help_text = subprocess.run([sys.executable, "-m", "duo_unlearn.trainer.cli", "train", "--help"],
                               capture_output=True, text=True, check=True).stdout
    for flag in ("--pairs", "--beta", "--lam", "--rank", "--t-max", "--resume", "--mixed-precision", "--config"):
        assert flag in help_text
    run = subprocess.run([sys.executable, "-m", "duo_unlearn.trainer.cli", "train", "--pairs", str(tmp_path / "x")],
                         capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "pairs folder not found" in run.stderr


def test_the_cli_hides_library_notes_about_optional_backends(tmp_path, capsys):
    """transformers without torchvision (a fresh `pip install .`) and bitsandbytes without its CPU kernels each print
    a note on every run; the CLI keeps them out of what the user reads, and keeps the libraries' real errors."""
    import logging

    assert main(["info", str(tmp_path / "missing.safetensors")]) == 2
    for name in ("transformers.utils.import_utils", "bitsandbytes"):
        logger = logging.getLogger(name)
        assert not logger.isEnabledFor(logging.WARNING) and logger.isEnabledFor(logging.ERROR)
