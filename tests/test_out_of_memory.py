"""Running out of GPU memory during training, simulated on the CPU: smaller passes with the same loss, and at 1 pair
per pass one clear line, with the failed pass's tensors let go before the job puts the model back."""
import gc
import weakref

import pytest
import torch
from safetensors.torch import load_file

from duo_unlearn.trainer import steps
from duo_unlearn.trainer.config import TrainConfig
from duo_unlearn.trainer.errors import UserError
from duo_unlearn.trainer.models import load_model
from duo_unlearn.trainer.steps import Method
from duo_unlearn.trainer.train import train


def _cfg(pair_dir, tiny_model, tmp_path, name, **kw):
    kw = {"steps": 3, "beta": 1000, "lr": 1e-3, "lam": 100, "batch_pairs": 4, "device": "cpu", **kw}
    return TrainConfig(pairs=str(pair_dir), model=str(tiny_model), out=str(tmp_path / f"{name}.safetensors"), **kw)


def _scarce(monkeypatch, fits: int, held: list):
    """The DUO loss, out of memory on a pass of more than `fits` pairs, after making a tensor that the failed pass
    holds (as a real pass holds its activations)."""
    real = steps.METHODS["duo"]

    def loss_on(ctx, draw):
        if len(draw["idx"]) > fits:
            activations = torch.ones(1000)
            held.append(weakref.ref(activations))
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real.loss_on(ctx, draw)

    monkeypatch.setitem(steps.METHODS, "duo", Method(real.draw, loss_on))


def test_out_of_memory_halves_the_pass_and_trains_the_adapter_of_one_batch(tiny_model, pair_dir, tmp_path,
                                                                             monkeypatch):
    whole = train(_cfg(pair_dir, tiny_model, tmp_path, "whole"))
    held, said = [], []
    _scarce(monkeypatch, 1, held)
    halved = train(_cfg(pair_dir, tiny_model, tmp_path, "halved"),
                   lambda e: said.append(e.message) if "out of memory" in e.message else None)
    assert said == ["out of memory: 2 pair(s) per pass from now on", "out of memory: 1 pair(s) per pass from now on"]
    assert len(held) == 2  # 4 pairs, then 2, then 1 from the first step on
    ta, tb = load_file(str(whole.adapter)), load_file(str(halved.adapter))
    assert ta.keys() == tb.keys()
    assert max((ta[k] - tb[k]).abs().max().item() for k in ta) < 1e-4  # summation order apart
    assert all(abs(x["loss"] - y["loss"]) < 1e-4 for x, y in zip(whole.history, halved.history))


def test_out_of_memory_at_one_pair_is_one_line_and_lets_the_failed_pass_go(tiny_model, pair_dir, tmp_path,
                                                                           monkeypatch):
    model = load_model(tiny_model)
    held = []
    _scarce(monkeypatch, 0, held)
    with pytest.raises(UserError, match="out of GPU memory even at 1 pair per pass") as caught:
        train(_cfg(pair_dir, tiny_model, tmp_path, "none"), model=model)
    # no context: the simulated OOM, and what its traceback held, went before the job put the model back
    assert caught.value.__context__ is None
    gc.collect()
    assert held and all(r() is None for r in held)
    assert not (tmp_path / "none.safetensors").exists()
    assert not any(".lora_" in n for n, _ in model.pipe.unet.named_parameters())  # the model as it was


def _card_too_small(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.50 GiB. GPU 0 has a total capacity of "
                                 "15.70 GiB of which 2.10 GiB is free.")


def test_a_model_bigger_than_the_card_is_one_line_from_the_cli(tiny_model, tmp_path, monkeypatch, capsys):
    from duo_unlearn.trainer import runtime
    from duo_unlearn.trainer.cli import main

    monkeypatch.setattr(runtime, "place", _card_too_small)  # where sampling pairs puts the whole model on the card
    out = tmp_path / "pairs"
    code = main(["pairs", "--model", str(tiny_model), "--out", str(out), "--unsafe-prompt", "a red circle",
                 "--safe-prompt", "a blue circle", "--num-pairs", "2", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err  # above the line: only the model's loading bars
    assert err.strip().splitlines()[-1] == (
        "duo-unlearn: error: out of GPU memory asking for 9.50 GiB more: close what else uses the GPU, or try a "
        "smaller resolution, mixed precision bf16 (or fp16), gradient checkpointing on, or the cpu device")


def test_other_runtime_errors_keep_their_traceback(tiny_model, tmp_path, monkeypatch):
    from duo_unlearn.trainer import runtime
    from duo_unlearn.trainer.cli import main

    def bug(*a, **k):
        raise RuntimeError("a bug, not the card")

    monkeypatch.setattr(runtime, "place", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["pairs", "--model", str(tiny_model), "--out", str(tmp_path / "pairs"), "--unsafe-prompt", "a",
              "--safe-prompt", "b", "--num-pairs", "1", "--device", "cpu"])


def test_the_tab_says_out_of_memory_in_one_line_without_a_traceback(capsys):
    from duo_unlearn.extension.jobs import JobRunner

    job = JobRunner().run_here("unlearn", "x", lambda progress=None: _card_too_small())
    assert job.state == "failed" and job.error.startswith("out of GPU memory asking for 9.50 GiB more: ")
    assert "Traceback" not in capsys.readouterr().err
