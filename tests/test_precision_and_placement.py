"""Issue 10 on the CPU: where every component ends after a job, which tensors are half and which fp32, micro-batches
that give the same adapter as one batch, and training at a chosen resolution."""
import pytest
import torch
from safetensors.torch import load_file

from duo_unlearn.trainer.config import TrainConfig
from duo_unlearn.trainer.models import load_model
from duo_unlearn.trainer.train import train


def _where(pipe):
    """(device type, dtype) of every parameter of every component, LoRA parameters apart."""
    seen = {}
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            for pname, p in module.named_parameters():
                kind = "lora" if ".lora_" in pname else "frozen"
                seen.setdefault((name, kind), set()).add((p.device.type, p.dtype))
    return seen


def _cfg(pair_dir, tiny_model, tmp_path, name, **kw):
    kw = {"steps": 3, "beta": 1000, "lr": 1e-3, "lam": 100, **kw}
    return TrainConfig(pairs=str(pair_dir), model=str(tiny_model), out=str(tmp_path / f"{name}.safetensors"), **kw)


def test_bf16_keeps_frozen_weights_half_and_lora_and_optimizer_fp32(tiny_model, pair_dir, tmp_path):
    model = load_model(tiny_model)
    during = {}

    def look(event):
        if event.stage == "train" and event.step == 1:
            during.update(_where(model.pipe))

    cfg = _cfg(pair_dir, tiny_model, tmp_path, "bf16", mixed_precision="bf16", device="cpu", steps=3)
    train(cfg, progress=look, model=model)
    assert during[("unet", "frozen")] == {("cpu", torch.bfloat16)}
    assert during[("unet", "lora")] == {("cpu", torch.float32)}
    assert during[("vae", "frozen")] == {("cpu", torch.bfloat16)}
    assert {t.dtype for t in load_file(str(tmp_path / "bf16.safetensors")).values()} == {torch.float32}


def test_optimizer_state_is_fp32_under_bf16(tiny_model, pair_dir, tmp_path):
    from duo_unlearn.trainer.errors import Cancelled

    cfg = _cfg(pair_dir, tiny_model, tmp_path, "opt", mixed_precision="bf16", device="cpu", steps=4,
               checkpoint_every=2)

    def stop(event):
        return not (event.stage == "train" and event.step == 3)

    with pytest.raises(Cancelled):
        train(cfg, progress=stop)
    state = torch.load(tmp_path / "opt.safetensors.checkpoints" / "step-000002" / "state.pt", weights_only=True)
    moments = [v for s in state["optimizer"]["state"].values() for k, v in s.items() if k.startswith("exp_avg")]
    assert moments and {m.dtype for m in moments} == {torch.float32}


@pytest.mark.parametrize("precision, frozen", [("no", torch.float32), ("bf16", torch.bfloat16)])
def test_two_jobs_in_a_row_on_one_loaded_model(tiny_model, pair_dir, tmp_path, precision, frozen):
    model = load_model(tiny_model)
    for k in range(2):  # the tab's second click / a multi-concept preset's second concept
        train(_cfg(pair_dir, tiny_model, tmp_path, f"job{k}", mixed_precision=precision, device="cpu",
                   preview_prompts=("a red square",), preview_steps=2), model=model)
        where = _where(model.pipe)
        assert {dev for v in where.values() for dev, _ in v} == {"cpu"}  # nothing left split across devices
        for component in ("unet", "vae", "text_encoder"):
            assert where[(component, "frozen")] == {("cpu", frozen)}
        assert where[("unet", "lora")] == {("cpu", torch.float32)}
        model.pipe.unet.delete_adapters("duo")


def test_micro_batches_give_the_adapter_of_one_batch(tiny_model, pair_dir, tmp_path):
    whole = _cfg(pair_dir, tiny_model, tmp_path, "whole", batch_pairs=4, device="cpu")
    parts = _cfg(pair_dir, tiny_model, tmp_path, "parts", batch_pairs=4, micro_batch_pairs=1, device="cpu")
    a = train(whole)
    b = train(parts)
    ta, tb = load_file(str(a.adapter)), load_file(str(b.adapter))
    assert ta.keys() == tb.keys()
    # the same up to float summation order (Adam turns 1e-7 gradient differences into ~1e-5 weight differences)
    assert max((ta[k] - tb[k]).abs().max().item() for k in ta) < 1e-4
    assert a.history[0]["loss"] == b.history[0]["loss"]
    assert all(abs(x["loss"] - y["loss"]) < 1e-4 for x, y in zip(a.history, b.history))


def test_resolution_sets_the_training_size(tiny_model, pair_dir, tmp_path):
    from duo_unlearn.trainer.export import describe_adapter

    result = train(_cfg(pair_dir, tiny_model, tmp_path, "small", resolution=8, device="cpu"))
    assert describe_adapter(result.adapter)["duo"]["resolution"] == 8
    native = train(_cfg(pair_dir, tiny_model, tmp_path, "native", device="cpu"))
    assert describe_adapter(native.adapter)["duo"]["resolution"] == 16


def test_preservation_term_is_full_precision_under_bf16(tiny_model, pair_dir, tmp_path):
    """λ·‖ε_θ(x_T) − ε_ref(x_T)‖² at the first step (LoRA B = 0: policy = reference) is exactly 0 in fp32; in
    bf16 passes it would be rounding noise times λ."""
    result = train(_cfg(pair_dir, tiny_model, tmp_path, "prior", mixed_precision="bf16", device="cpu", steps=1,
                        lam=5e6))
    assert result.history[0]["prior"] == 0.0


def test_after_unlearn_every_component_is_where_the_next_job_expects(tiny_model, tmp_path):
    from duo_unlearn.trainer.unlearn import UnlearnConfig, unlearn

    model = load_model(tiny_model)
    unlearn(UnlearnConfig(preset="custom", model=str(tiny_model), out=str(tmp_path / "u.safetensors"),
                          unsafe_prompts=("a red square",), safe_prompts=("a blue square",), num_pairs=2, steps=2,
                          rank=4, mixed_precision="bf16", device="cpu"), model=model)
    where = _where(model.pipe)
    assert not any(kind == "lora" for _, kind in where)  # the adapter was taken off the loaded model
    for component in ("unet", "vae", "text_encoder"):
        assert where[(component, "frozen")] == {("cpu", torch.bfloat16)}


def test_the_memory_estimate_counts_the_float32_preservation_rows():
    """`auto` checkpointing weighs the rows that keep activations at a pass's peak: under bf16 the B pure-noise rows
    run in float32, twice a bf16 row's bytes, and backpropagate before the 2B rows of the pairs' pass, so the peak is
    the larger of the two; in float32 they are B more rows of the same pass; without λ there are none."""
    from duo_unlearn.trainer.train import estimated_rows

    cfg = TrainConfig(pairs="p", model="m", out="o.safetensors", batch_pairs=4)
    assert estimated_rows(cfg, compute_bytes=2, lam=5e6) == max(8, 8)
    assert estimated_rows(cfg, compute_bytes=4, lam=5e6) == 8 + 4
    assert estimated_rows(cfg, compute_bytes=2, lam=0) == 8
    assert estimated_rows(TrainConfig(pairs="p", model="m", out="o.safetensors", batch_pairs=4, micro_batch_pairs=1),
                          compute_bytes=2, lam=5e6) == 2
    assert estimated_rows(TrainConfig(pairs="p", model="m", out="o.safetensors", batch_pairs=4, method="esd"),
                          compute_bytes=2, lam=5e6) == 8
