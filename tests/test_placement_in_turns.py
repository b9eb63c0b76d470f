"""A pipeline the device cannot hold whole (Flux's T5 beside its NF4 transformer on a 16 GB card) is placed in turns:
the text encoders and VAE for the cache while the denoiser waits on the CPU, then the denoiser. Simulated on the
CPU, where every move is to the same device: what is checked is what each move asks for, and that training in
turns makes the same adapter."""
import pytest
import torch
from safetensors.torch import load_file

from duo_unlearn.trainer import runtime
from duo_unlearn.trainer import train as train_module
from duo_unlearn.trainer.config import TrainConfig
from duo_unlearn.trainer.errors import UserError
from duo_unlearn.trainer.models import load_model
from duo_unlearn.trainer.runtime import Runtime, bytes_to_place, holds_whole, place
from duo_unlearn.trainer.train import train


def _cuda_bf16() -> Runtime:
    # a runtime for a GPU this machine lacks: only its device and dtype are read, nothing is moved
    return Runtime(device=torch.device("cuda", 0), frozen_dtype=torch.bfloat16, compute_dtype=torch.bfloat16,
                   mixed_precision="bf16", gradient_checkpointing="auto")


def _tensors(pipe):
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            yield from list(component.parameters()) + list(component.buffers())


def test_bytes_to_place_counts_what_is_not_on_the_device_in_the_frozen_dtype(tiny_model):
    pipe = load_model(tiny_model).pipe
    expected = sum(t.numel() * (2 if t.is_floating_point() else t.element_size()) for t in _tensors(pipe))
    assert expected > 0
    assert bytes_to_place(pipe, _cuda_bf16()) == expected
    cpu = Runtime(device=torch.device("cpu"), frozen_dtype=torch.float32, compute_dtype=torch.float32,
                  mixed_precision="no", gradient_checkpointing="auto")
    assert bytes_to_place(pipe, cpu) == 0  # already there


def test_holds_whole_compares_with_free_memory_and_its_headroom(tiny_model, monkeypatch):
    pipe = load_model(tiny_model).pipe
    rt = _cuda_bf16()
    need = bytes_to_place(pipe, rt)
    monkeypatch.setattr(runtime, "free_memory_bytes", lambda device: int(need / runtime.CHECKPOINT_HEADROOM) + 1)
    assert holds_whole(pipe, rt)
    monkeypatch.setattr(runtime, "free_memory_bytes", lambda device: need)
    assert not holds_whole(pipe, rt)
    monkeypatch.setattr(runtime, "free_memory_bytes", lambda device: None)  # MPS: unknown, placed whole as before
    assert holds_whole(pipe, rt)


def test_waiting_on_the_cpu_still_casts_to_the_frozen_dtype(tiny_model):
    pipe = load_model(tiny_model).pipe
    rt = runtime.resolve(runtime.RuntimeConfig(device="cpu", mixed_precision="bf16"))
    place(pipe, rt, wait_on_cpu=[pipe.unet])
    assert {p.dtype for p in pipe.unet.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in pipe.unet.parameters()} == {"cpu"}


def test_training_in_turns_moves_the_denoiser_after_the_cache_and_trains_the_same_adapter(
        tiny_model, pair_dir, tmp_path, monkeypatch):
    def cfg(name):
        return TrainConfig(pairs=str(pair_dir), model=str(tiny_model), out=str(tmp_path / f"{name}.safetensors"),
                           steps=3, beta=1000, lr=1e-3, lam=100, batch_pairs=4, device="cpu")

    whole = train(cfg("whole"))

    model = load_model(tiny_model)
    pipe = model.pipe
    events = []
    real_place, real_cache, real_add_lora = train_module.place, train_module.build_cache, train_module.add_lora
    names = {id(m): n for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}

    def spy_place(p, rt, wait_on_cpu=()):
        events.append(("place", sorted(names[id(m)] for m in wait_on_cpu)))
        return real_place(p, rt, wait_on_cpu)

    def spy_cache(*a, **k):
        events.append(("cache",))
        return real_cache(*a, **k)

    def spy_add_lora(denoiser, *a, **k):
        events.append(("lora",))
        return real_add_lora(denoiser, *a, **k)

    real_to = pipe.unet.to

    def unet_to(*a, **k):
        events.append(("unet.to", *map(str, a), *sorted(k)))
        return real_to(*a, **k)

    monkeypatch.setattr(train_module, "holds_whole", lambda p, rt: False)
    monkeypatch.setattr(train_module, "place", spy_place)
    monkeypatch.setattr(train_module, "build_cache", spy_cache)
    monkeypatch.setattr(train_module, "add_lora", spy_add_lora)
    monkeypatch.setattr(pipe.unet, "to", unet_to)
    said = []
    turns = train(cfg("turns"), lambda e: said.append(e.message), model=model)

    assert events == [("place", ["unet"]), ("unet.to", "device", "dtype"),  # waits on the CPU, cast
                      ("cache",), ("unet.to", "cpu"),  # to the runtime device (here the CPU) once the cache is made
                      ("lora",), ("unet.to", "cpu"),  # accelerate's prepare: on its device already
                      ("place", ["text_encoder"]), ("unet.to", "device", "dtype")]  # the text encoder stays out
    assert any("cannot hold the whole model" in m for m in said)
    ta, tb = load_file(str(whole.adapter)), load_file(str(turns.adapter))
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


class _OffloadSpy:
    """Records, for every call of the denoiser, whether diffusers' model offload had hooked it, and checks that no
    hook outlives its block."""

    def __init__(self, pipe):
        self.pipe, self.hooked = pipe, []
        # (hooked, in training mode): sampling puts the denoiser in eval mode, training steps in train mode
        pipe.unet.register_forward_pre_hook(lambda m, a: self.hooked.append((hasattr(m, "_hf_hook"), m.training)))

    def hooks_left(self) -> list[str]:
        return [n for n, m in self.pipe.components.items()
                if isinstance(m, torch.nn.Module) and hasattr(m, "_hf_hook")]


def _pair_images(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_pairs_for_a_model_the_device_cannot_hold_whole_sample_with_model_offload_and_the_same_images(
        tiny_model, tmp_path, monkeypatch):
    from duo_unlearn.trainer.pairs import PairConfig, generate_pairs

    def cfg(name):
        return PairConfig(out=str(tmp_path / name), model=str(tiny_model), unsafe_prompts=("a red square",),
                          safe_prompts=("a blue square",), num_pairs=2, batch_size=2, sample_steps=2, seed=3,
                          device="cpu")

    generate_pairs(cfg("whole"), model=load_model(tiny_model))
    model = load_model(tiny_model)
    spy = _OffloadSpy(model.pipe)
    monkeypatch.setattr(runtime, "holds_whole", lambda p, rt: False)
    generate_pairs(cfg("offload"), model=model)
    assert spy.hooked and all(hooked for hooked, _ in spy.hooked)  # every sampling step ran under the offload
    assert spy.hooks_left() == []
    whole, offload = _pair_images(tmp_path / "whole"), _pair_images(tmp_path / "offload")
    assert {str(k) for k in whole} >= {"unsafe/00000.png", "unsafe/00001.png", "safe/00000.png", "safe/00001.png"}
    assert whole == offload


def test_training_in_turns_checks_and_previews_with_model_offload_and_changes_nothing(
        tiny_model, pair_dir, tmp_path, monkeypatch):
    from duo_unlearn.trainer import detectors
    from duo_unlearn.trainer.erasure_stop import CHECK_IMAGES
    from tiny_models import ScriptedDetector

    # the concept found in every check image: the check at the last step, and the preview at step 2 before it
    monkeypatch.setattr(detectors, "make_detector", lambda spec: ScriptedDetector(found=[CHECK_IMAGES]))

    def cfg(name):
        return TrainConfig(pairs=str(pair_dir), model=str(tiny_model), out=str(tmp_path / name / "a.safetensors"),
                           steps=4, beta=1000, lr=1e-3, lam=100, batch_pairs=4, device="cpu", stop_every=4,
                           stop_detector="colour:red", preview_prompts=("a red square",), preview_steps=2,
                           preview_every=2)

    whole = train(cfg("whole"))
    model = load_model(tiny_model)
    spy = _OffloadSpy(model.pipe)
    monkeypatch.setattr(train_module, "holds_whole", lambda p, rt: False)
    monkeypatch.setattr(runtime, "holds_whole", lambda p, rt: False)
    turns = train(cfg("turns"), model=model)

    # every training pass ran without hooks; the sampling of the check and of both previews, with them
    assert {(hooked, training) for hooked, training in spy.hooked} == {(False, True), (True, False)}
    assert spy.hooks_left() == []
    ta, tb = load_file(str(whole.adapter)), load_file(str(turns.adapter))
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert [p.name for p in whole.previews] == [p.name for p in turns.previews]
    assert [p.read_bytes() for p in whole.previews] == [p.read_bytes() for p in turns.previews]
    mid = "a.preview-000002.png"
    assert (tmp_path / "whole" / mid).read_bytes() == (tmp_path / "turns" / mid).read_bytes()


def test_eval_of_a_model_the_device_cannot_hold_whole_samples_under_model_offload_with_the_same_report(
        tiny_model, pair_dir, tmp_path, monkeypatch):
    from duo_unlearn.trainer.evaluate.run import EvalConfig, evaluate

    adapter = tmp_path / "duo_red.safetensors"
    train(TrainConfig(pairs=str(pair_dir), model=str(tiny_model), out=str(adapter), steps=3, lr=5e-2, lam=0,
                      beta=1000, concept="red", device="cpu", preview_prompts=()))

    def cfg(name, attacks=("direct", "ring_a_bell")):  # Ring-A-Bell: the text encoders alone, under their hooks
        return EvalConfig(model=str(tiny_model), adapters=(str(adapter),), attacks=attacks, images_per_prompt=1,
                          max_prompts=2, sample_steps=2, rab_population=8, rab_generations=2, rab_length=3,
                          lpips_backbone="random", pairs=str(pair_dir), out=str(tmp_path / name), device="cpu")

    whole = evaluate(cfg("whole"))
    model = load_model(tiny_model)
    spy = _OffloadSpy(model.pipe)
    monkeypatch.setattr(runtime, "holds_whole", lambda p, rt: False)
    offload = evaluate(cfg("offload"), model=model)
    assert spy.hooked and all(hooked for hooked, _ in spy.hooked)
    assert spy.hooks_left() == []
    assert set(offload["results"]["duo_red"]["attacks"]) == {"direct", "ring_a_bell"}
    assert offload["results"] == whole["results"]
    assert offload["attacks"] == whole["attacks"]
    for grid in ("unrelated", "direct", "ring_a_bell"):
        name = f"grid_{grid}.png"
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "offload" / name).read_bytes()

    # the white-box attacks backpropagate through encoders the offload moves away: refused in one line, up front
    spy.hooked.clear()
    with pytest.raises(UserError, match=r"concept_inversion, unlearndiffatk attack\(s\) backpropagate.*"
                                        r"--attacks direct,prompts"):
        evaluate(cfg("white_box", ("direct", "prompts", "concept_inversion", "unlearndiffatk")), model=model)
    assert spy.hooked == [] and not (tmp_path / "white_box").exists()


def test_compare_on_a_model_the_device_cannot_hold_whole_samples_under_model_offload_with_the_same_images(
        tiny_model, pair_dir, tmp_path, monkeypatch):
    import numpy as np

    from duo_unlearn.extension.backends import StandaloneBackend
    from duo_unlearn.extension.tab import NONE as none, TabController

    lora_dir = tmp_path / "Lora"
    train(TrainConfig(pairs=str(pair_dir), model=str(tiny_model), out=str(lora_dir / "duo_red.safetensors"),
                      steps=3, lr=5e-2, lam=0, beta=1000, concept="red", device="cpu", preview_prompts=()))
    args = (str(tiny_model), "a red square", "", 5, 2, 3.0, "duo_red", 1.0, none, 1.0, none, 1.0, none, 1.0)

    whole_base, whole_adapted, _ = TabController(StandaloneBackend(lora_dir, device="cpu")).compare(*args)
    backend = StandaloneBackend(lora_dir, device="cpu")
    backend.load(str(tiny_model))
    spy = _OffloadSpy(backend._model[1].pipe)
    monkeypatch.setattr(runtime, "holds_whole", lambda p, rt: False)
    base, adapted, _ = TabController(backend).compare(*args)
    assert len(spy.hooked) == 4 and all(hooked for hooked, _ in spy.hooked)  # 2 steps each, one image per call
    assert spy.hooks_left() == []
    assert np.array_equal(np.asarray(base), np.asarray(whole_base))
    assert np.array_equal(np.asarray(adapted), np.asarray(whole_adapted))
    assert not np.array_equal(np.asarray(base), np.asarray(adapted))  # the adapter was on for the second image
    pipe = backend._model[1].pipe
    assert not any("lora_" in n for n, _ in pipe.unet.named_parameters())  # and unloaded afterwards
