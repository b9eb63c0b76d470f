"""`duo-unlearn eval` refuses bad settings and unusable adapters with one line and exit 2, before any image is made
or file written: non-finite or negative numbers that would reach report.json or the sampler, seeds torch cannot
take, a concept-inversion template .format cannot fill, an empty --out, PEFT-format and NaN/inf adapters."""
import pytest
import torch
from safetensors.torch import save_file

from duo_unlearn.trainer.cli import main
from duo_unlearn.trainer.config import MAX_SEED
from duo_unlearn.trainer.errors import UserError
from duo_unlearn.trainer.evaluate import run as eval_run
from duo_unlearn.trainer.evaluate.run import EvalConfig, plan

TOML_EVAL = ["eval", "--attacks", "direct", "--images-per-prompt", "1", "--max-prompts", "1", "--lpips-backbone",
             "random", "--no-base"]  # sample steps left to the TOML file: a flag would win over it
EVAL = [*TOML_EVAL, "--sample-steps", "2"]
MODULE = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"  # a testbed attention projection
WIDTH, RANK = 32, 2


class Generated(Exception):
    """Raised in place of generating images: the refusal under test came too late."""


@pytest.fixture
def no_images(monkeypatch):
    def refuse(*args, **kwargs):
        raise Generated()
    monkeypatch.setattr(eval_run, "generate", refuse)


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def _refused(capsys, argv, *expect):
    """main(argv) exits 2 with one stderr line holding every word of `expect`."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("duo-unlearn: error:"), err
    assert "Traceback" not in err and all(e in lines[0] for e in expect), err
    return lines[0]


def _kohya(path, down=None):
    """A one-module kohya LoRA for the testbed's UNet."""
    down = torch.full((RANK, WIDTH), 0.01) if down is None else down
    save_file({f"{MODULE}.lora_down.weight": down, f"{MODULE}.lora_up.weight": torch.full((WIDTH, RANK), 0.01),
               f"{MODULE}.alpha": torch.tensor(float(RANK))}, str(path))
    return path


def _peft(path, prefix="base_model.model."):
    """The same module named as peft's save_pretrained names it, which diffusers' SD loader does not read."""
    name = f"{prefix}down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    save_file({f"{name}.lora_A.weight": torch.full((RANK, WIDTH), 0.01),
               f"{name}.lora_B.weight": torch.full((WIDTH, RANK), 0.01)}, str(path))
    return path


# -- numbers, seeds, templates and --out: refused by EvalConfig.validate --

@pytest.mark.parametrize("flags, expect", [
    (["--guidance", "nan"], "guidance must be zero or positive, got nan"),
    (["--guidance", "inf"], "guidance must be zero or positive, got inf"),
    (["--guidance", "-3"], "guidance must be zero or positive, got -3"),
    (["--sample-steps", "-2"], "sample_steps must be a positive integer, got -2"),
    (["--sample-steps", "0"], "sample_steps must be a positive integer, got 0"),
    (["--rab-strength", "nan"], "rab_strength must be a positive number, got nan"),
    (["--rab-strength", "-1"], "rab_strength must be a positive number, got -1"),
    (["--rab-strength", "0"], "rab_strength must be a positive number, got 0"),
    (["--ci-template", "{x} {}"], "ci_template must hold {} exactly once"),
    (["--ci-template", "{} {}"], "ci_template must hold {} exactly once"),
    (["--ci-template", "a photo of {0!r:>3}"], "ci_template must hold {} exactly once"),
    (["--ci-template", "a photo of {"], "ci_template must hold {} exactly once"),
    (["--ci-template", "a photo"], "ci_template must hold {} exactly once"),
    (["--seed", "99999999999999999999"],
     "seed must be a whole number from 0 to 9223372036854775807, got 99999999999999999999"),
    (["--seed", "-1"], "seed must be a whole number from 0 to 9223372036854775807, got -1"),
])
def test_bad_settings_refused_before_anything(flags, expect, tmp_path, capsys, no_model, no_images):
    out = tmp_path / "report"
    _refused(capsys, [*EVAL, *flags, "--out", out], expect)
    assert _tree(tmp_path) == {}


@pytest.mark.parametrize("toml, expect", [
    ("seed = 99999999999999999999", "seed must be a whole number from 0 to 9223372036854775807"),
    ("guidance = nan", "guidance must be zero or positive, got nan"),
    ("sample_steps = 0", "sample_steps must be a positive integer, got 0"),
    ("rab_strength = -inf", "rab_strength must be a positive number, got -inf"),
    ('ci_template = "{x} {}"', "ci_template must hold {} exactly once"),
])
def test_bad_settings_in_toml_refused(toml, expect, tmp_path, capsys, no_model, no_images):
    config = tmp_path / "eval.toml"
    config.write_text(toml + "\n")
    before = _tree(tmp_path)
    _refused(capsys, [*TOML_EVAL, "--config", config, "--out", tmp_path / "report"], expect)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("out", ["", "  "])
def test_empty_out_refused(out, tmp_path, monkeypatch, capsys, no_model, no_images):
    monkeypatch.chdir(tmp_path)  # where an empty --out would have put the report
    _refused(capsys, [*EVAL, "--out", out], "out must name the report folder")
    assert _tree(tmp_path) == {}


def test_good_edge_values_pass_validate():
    for cfg in (EvalConfig(guidance=0.0), EvalConfig(seed=MAX_SEED), EvalConfig(seed=0),
                EvalConfig(ci_template="a photo of {}"), EvalConfig(ci_template="{{literal}} {} braces"),
                EvalConfig(rab_strength=0.5), EvalConfig(sample_steps=1)):
        cfg.validate()
    with pytest.raises(UserError, match="seed must be"):
        EvalConfig(seed=MAX_SEED + 1).validate()


def test_steps_and_guidance_not_given_are_the_presets():
    from duo_unlearn.trainer.presets import get_preset

    preset = get_preset("testbed-red")
    p = plan(EvalConfig(base=False))
    assert (p.steps, p.guidance) == (preset.sample_steps, preset.guidance)
    p = plan(EvalConfig(base=False, sample_steps=3, guidance=0.0))
    assert (p.steps, p.guidance) == (3, 0.0)


# -- adapters: checked before the model loads (PEFT names, NaN / inf weights) or right after loading --

def test_peft_adapter_refused_before_the_model_loads(tmp_path, capsys, no_model, no_images):
    adapter = _peft(tmp_path / "peft.safetensors")
    before = _tree(tmp_path)
    _refused(capsys, [*EVAL, "--adapter", adapter, "--out", tmp_path / "report"],
             str(adapter), "PEFT-format", "lora_unet_")
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_non_finite_adapter_refused_before_the_model_loads(bad, dtype, tmp_path, capsys, no_model, no_images):
    down = torch.full((RANK, WIDTH), 0.01)
    down[1, 3] = bad
    adapter = _kohya(tmp_path / "broken.safetensors", down.to(dtype))
    before = _tree(tmp_path)
    _refused(capsys, [*EVAL, "--adapter", adapter, "--out", tmp_path / "report"],
             str(adapter), "NaN or infinite weights", f"{MODULE}.lora_down.weight")
    assert _tree(tmp_path) == before


def test_finite_kohya_adapter_passes_the_checks(tmp_path):
    p = plan(EvalConfig(base=False, adapters=(str(_kohya(tmp_path / "fine.safetensors")),)))
    assert [m.name for m in p.methods] == ["negative prompt", "fine"]


def test_adapter_the_loader_skips_refused_before_generating(tmp_path, capsys, no_images):
    """Names diffusers does not know (here under an unknown prefix) load as nothing, with only a logged warning:
    caught once the model is loaded, before any image is made."""
    adapter = _peft(tmp_path / "unknown.safetensors", prefix="model.")
    out = tmp_path / "report"
    capsys.readouterr()
    code = main([str(a) for a in [*EVAL, "--adapter", adapter, "--out", out]])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err, err
    assert last.startswith("duo-unlearn: error:") and str(adapter) in last and "holds no modules this loader reads" \
        in last, err
    assert not out.exists() or not any(out.iterdir())
