"""The output-preservation rows under half-precision frozen weights: float32 numbers, one layer's float32 copy at a
time (trainer/steps/context.py, _upcast_per_layer)."""
import importlib.util
import weakref
from pathlib import Path

import pytest
import torch
from peft import LoraConfig

from duo_unlearn.trainer.lora import adapters_disabled
from duo_unlearn.trainer.models import load_model
from duo_unlearn.trainer.steps.context import _full_precision_kernels, _half_frozen, _upcast_per_layer


BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "preservation_memory.py"


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("preservation_memory_under_test", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_upcast_whole_model = _load_benchmark().upcast_whole_model  # the reference: every frozen weight float32 at once


def _bf16_unet_with_lora(tiny_model):
    unet = load_model(tiny_model).pipe.unet.to(torch.bfloat16)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    gen = torch.Generator().manual_seed(0)
    for name, p in unet.named_parameters():
        if ".lora_" in name:  # B != 0, so the adapter changes the output and the term has a gradient
            p.data = (torch.randn(p.shape, generator=gen) * 0.05).float()
            p.requires_grad_(True)
    return unet


def _inputs(unet):
    gen = torch.Generator().manual_seed(1)
    size = unet.config.sample_size
    x = torch.randn(2, unet.config.in_channels, size, size, generator=gen)
    cond = torch.randn(2, 4, unet.config.cross_attention_dim, generator=gen)
    return x, torch.tensor([999, 999]), cond


def _term(unet, upcaster):
    half = _half_frozen(unet)
    x, t, cond = _inputs(unet)
    unet.zero_grad(set_to_none=True)
    with upcaster(half), _full_precision_kernels():
        pred = unet(x, t, cond).sample
        with torch.no_grad(), adapters_disabled(unet):
            ref = unet(x, t, cond).sample
        loss = torch.nn.functional.mse_loss(pred, ref)
        loss.backward()
    grads = {n: p.grad.clone() for n, p in unet.named_parameters() if ".lora_" in n}
    return loss.detach(), grads, pred.dtype


@pytest.mark.parametrize("checkpointing", [False, True])
def test_layer_at_a_time_gives_the_numbers_of_the_whole_model_upcast(tiny_model, checkpointing):
    unet = _bf16_unet_with_lora(tiny_model)
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    loss, grads, dtype = _term(unet, _upcast_per_layer)
    want_loss, want_grads, _ = _term(unet, _upcast_whole_model)
    assert dtype == torch.float32 and loss > 0
    assert torch.equal(loss, want_loss)
    assert grads.keys() == want_grads.keys() and len(grads) > 0
    for name in grads:
        assert torch.equal(grads[name], want_grads[name]), name
    # the model is as it was: the same parameter objects, still half precision
    assert all(p.dtype == torch.bfloat16 for n, p in unet.named_parameters() if ".lora_" not in n)


def test_float32_copies_of_frozen_weights_do_not_outlive_their_layer(tiny_model, monkeypatch):
    """Autograd keeps what backward needs as a reference to the half weight, not the float32 copy: after the
    forward, before backward, no copy is alive (the whole-model upcast keeps every one)."""
    unet = _bf16_unet_with_lora(tiny_model)
    half = _half_frozen(unet)
    addresses = {p.data_ptr() for p in half}
    copies = []
    to_float = torch.Tensor.float

    def watched(self, *a, **k):
        out = to_float(self, *a, **k)
        if self.dtype == torch.bfloat16 and self.data_ptr() in addresses:
            copies.append(weakref.ref(out))
        return out

    monkeypatch.setattr(torch.Tensor, "float", watched)
    x, t, cond = _inputs(unet)
    with _upcast_per_layer(half), _full_precision_kernels():
        pred = unet(x, t, cond).sample
        made = len(copies)
        alive = sum(r() is not None for r in copies)
        pred.float().square().mean().backward()
    assert made >= len(half) // 2  # every layer's weights were upcast as it ran
    assert alive == 0
    assert any(p.grad is not None for n, p in unet.named_parameters() if ".lora_" in n)


def test_memory_benchmark_compares_both_strategies_on_the_tiny_shapes():
    """benchmarks/preservation_memory.py --tiny: both strategies run in their own process and give the same loss."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, str(BENCHMARK), "--tiny"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [line for line in run.stdout.splitlines() if line.startswith(("| whole model", "| per layer"))]
    assert len(rows) == 2
    losses = {float(r.strip("|").split("|")[-1]) for r in rows}
    assert len(losses) == 1 and losses.pop() > 0
    assert "same loss from both strategies: True" in run.stdout


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_every_family_trains_the_same_under_bf16_with_either_upcast(family, tmp_path, monkeypatch):
    """Two bf16 steps with λ > 0 and checkpointing on, through the trainer: the per-layer upcast gives the history of
    the whole-model one exactly, and the preservation term is exactly 0 while the adapter is still zero."""
    from tiny_families import build_tiny_flux, build_tiny_sd3, build_tiny_sdxl
    from tiny_models import write_pair_dataset

    from duo_unlearn.trainer.config import TrainConfig
    from duo_unlearn.trainer.steps import context
    from duo_unlearn.trainer.train import train

    folder = {"sdxl": build_tiny_sdxl, "sd3": build_tiny_sd3, "flux": build_tiny_flux}[family](tmp_path / "model")
    pairs = write_pair_dataset(tmp_path / "pairs", n=4)

    def run(name):
        cfg = TrainConfig(pairs=str(pairs), model=str(folder), out=str(tmp_path / f"{name}.safetensors"), steps=2,
                          beta=1000, lr=1e-2, lam=1e4, batch_pairs=2, device="cpu", mixed_precision="bf16",
                          gradient_checkpointing="on", seed=0)
        cfg.lora.rank, cfg.lora.alpha = 4, 4.0  # the tiny layers are 16 to 32 wide
        return train(cfg).history

    per_layer = run("per_layer")
    monkeypatch.setattr(context, "_upcast_per_layer", _upcast_whole_model)
    whole = run("whole")
    assert per_layer[0]["prior"] == 0.0 and per_layer[1]["prior"] > 0
    assert [h["loss"] for h in per_layer] == [h["loss"] for h in whole]
    assert [h["prior"] for h in per_layer] == [h["prior"] for h in whole]


def test_the_preservation_pass_backpropagates_before_the_pairs_pass_builds_its_graph(tiny_model):
    """Under half precision the float32 x_T rows backpropagate on their own: they run first, so the pairs' graph is
    never held at the same time (a step's peak is the larger graph, not both)."""
    from duo_unlearn.trainer.families import Conditioning, get_family
    from duo_unlearn.trainer.families.base import DDPMProcess
    from duo_unlearn.trainer.latent_cache import LatentCache
    from duo_unlearn.trainer.steps import StepContext
    from duo_unlearn.trainer.steps.duo import duo_step

    pipe = load_model(tiny_model).pipe
    unet = _bf16_unet_with_lora(tiny_model)
    events = []
    unet.register_forward_pre_hook(lambda m, a: events.append(("forward", len(a[0]), torch.is_grad_enabled())))
    pairs, size = 3, unet.config.sample_size
    latents = torch.randn(2 * pairs, unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(0))
    empty = Conditioning({"encoder_hidden_states": torch.randn(1, 4, unet.config.cross_attention_dim)})
    cache = LatentCache(unsafe_mean=latents[:pairs], unsafe_std=torch.zeros_like(latents[:pairs]),
                        safe_mean=latents[pairs:], safe_std=torch.zeros_like(latents[pairs:]), scaling=1.0, shift=0.0,
                        empty=empty)

    def backward(loss):
        events.append(("backward",))
        loss.backward()

    ctx = StepContext(family=get_family("sd1"), process=DDPMProcess(pipe.scheduler.config), denoiser=unet, raw=unet,
                      cache=cache, t_range=(0, 750), beta=500.0, lam=5e6, backward=backward, half=True,
                      autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    out = duo_step(ctx, torch.arange(pairs), torch.Generator().manual_seed(1))
    ctx.backward(out.loss)
    assert events == [("forward", pairs, True), ("forward", pairs, False), ("backward",),  # x_T: policy, reference
                      ("forward", 2 * pairs, True), ("forward", 2 * pairs, False), ("backward",)]  # the pairs
    assert out.logs["prior"] > 0 and all(p.grad is not None for n, p in unet.named_parameters() if ".lora_" in n)


def test_step_order_benchmark_gives_the_same_gradients_in_both_orders():
    """benchmarks/step_order_memory.py --tiny: the former order and the trainer's give the same gradients, bit for
    bit, each order in its own process."""
    import subprocess
    import sys

    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "step_order_memory.py"
    run = subprocess.run([sys.executable, str(bench), "--tiny", "--pairs", "2"], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [line for line in run.stdout.splitlines() if line.startswith(("| pairs first", "| preservation first"))]
    assert len(rows) == 2
    assert len({r.strip("|").split("|")[-1].strip() for r in rows}) == 1
    assert "same gradients from both orders: True" in run.stdout
