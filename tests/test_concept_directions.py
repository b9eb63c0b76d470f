"""The adapter restricted to the concept's input directions (concept_directions.py)."""
import pytest
import torch

from duo_unlearn.trainer.cli_options import directions_setting
from duo_unlearn.trainer.concept_directions import AUTO, close_rows, describe, top_directions
from duo_unlearn.trainer.config import LoraConfig, TrainConfig
from duo_unlearn.trainer.errors import UserError
from duo_unlearn.trainer.export import decode_duo, read_metadata
from duo_unlearn.trainer.train import train
from test_retain_set import loaded, retain_pairs  # noqa: F401 - the same tiny model and retain set


def test_the_directions_are_where_the_concept_stands_out_not_where_it_is_largest():
    keep = torch.diag(torch.tensor([100.0, 1.0, 1.0, 1.0]))
    concept = torch.diag(torch.tensor([50.0, 2.0, 0.1, 0.3]))  # most energy on e0, but the kept inputs have more
    q, values = top_directions(concept, keep, 1, ridge=0.0)
    assert torch.allclose(q @ q.T, torch.diag(torch.tensor([0.0, 1.0, 0.0, 0.0])), atol=1e-6)
    assert values.tolist() == pytest.approx([2.0])
    q2, values2 = top_directions(concept, keep, 2, ridge=0.0)
    p2 = q2 @ q2.T
    assert torch.allclose(p2, torch.diag(torch.tensor([1.0, 1.0, 0.0, 0.0])), atol=1e-6)  # then e0 (0.5 > 0.3)
    assert values2.tolist() == pytest.approx([2.0, 0.5])
    assert torch.allclose(p2 @ p2, p2, atol=1e-6) and torch.allclose(p2, p2.T, atol=1e-6)


def test_with_a_correlated_keep_set_the_basis_spans_the_generalised_eigenvectors():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=g)
    keep, concept = m @ m.T + torch.eye(6), torch.randn(6, 3, generator=g) @ torch.randn(3, 6, generator=g)
    concept = concept @ concept.T
    q, values = top_directions(concept, keep, 3)
    assert torch.allclose(q.T @ q, torch.eye(3), atol=1e-5)
    # q spans the generalised eigenvectors themselves: concept v = μ keep v for some v in the span, per value
    for mu in values[:3]:
        m = (concept.double() - float(mu) * (keep.double() + 1e-3 * torch.trace(keep.double()) / 6 * torch.eye(6,
             dtype=torch.float64)))
        null = torch.linalg.svd(m).Vh[-1]  # the eigenvector of μ
        assert torch.linalg.norm(null - q.double() @ (q.double().T @ null)) < 1e-3
    assert values[0] >= values[1] >= values[2] > 0


def test_auto_keeps_the_directions_above_the_mean_whatever_the_scale():
    keep = torch.eye(6)
    concept = torch.diag(torch.tensor([4.0, 0.5, 3.0, 1.0, 0.0, 3.5]))  # μ = these; their mean 2.0
    q, values = top_directions(concept, keep, AUTO, ridge=0.0)
    assert values.tolist() == pytest.approx([4.0, 3.5, 3.0])
    assert torch.allclose(q @ q.T, torch.diag(torch.tensor([1.0, 0, 1, 0, 0, 1])), atol=1e-6)
    for scaled in ((concept * 50, keep), (concept, keep * 7)):  # e.g. a retain set counted seven times
        assert top_directions(*scaled, AUTO, ridge=0.0)[0].shape == (6, 3)
    wide = torch.diag(torch.cat([torch.tensor([4.0, 0.5, 3.0, 1.0, 0.0, 3.5])] * 4))
    assert top_directions(wide, torch.eye(24), AUTO, ridge=0.0)[0].shape == (24, 12)  # follows the width
    assert top_directions(wide, torch.eye(24), 3, ridge=0.0)[0].shape == (24, 3)  # a count does not


def test_a_share_keeps_that_part_of_each_layers_width_largest_first():
    concept = torch.diag(torch.tensor([4.0, 0.5, 3.0, 1.0, 0.0, 3.5]))
    q, values = top_directions(concept, torch.eye(6), 0.5, ridge=0.0)
    assert values.tolist() == pytest.approx([4.0, 3.5, 3.0])
    assert top_directions(concept, torch.eye(6), 0.4, ridge=0.0)[0].shape == (6, 3)  # rounded up: 2.4 -> 3
    wide = torch.diag(torch.arange(64.0))
    assert top_directions(wide, torch.eye(64), 0.5, ridge=0.0)[0].shape == (64, 32)


def test_the_directions_setting_takes_a_count_a_share_or_auto_and_nothing_else():
    for good in (AUTO, 0, 24, 0.5):
        assert TrainConfig(concept_directions=good).validate() is None
    for bad in (-1, True, 1.0, 2.5, 0.0, -0.5, float("nan"), "many", "24"):
        with pytest.raises(UserError, match="concept_directions must be 0 .off., a positive integer, a share"):
            TrainConfig(concept_directions=bad).validate()
    assert [directions_setting(t) for t in ("Auto", "24", "24.0", "0.5")] == [AUTO, 24, 24, 0.5]
    from duo_unlearn.trainer.config import from_mapping

    # a config file reads as the flag does
    read = [from_mapping(TrainConfig, {"concept_directions": v}).concept_directions
            for v in ("auto", "24", 24.0, "0.5", 0.5, 0)]
    assert read == [AUTO, 24, 24, 0.5, 0.5, 0] and isinstance(read[1], int) and isinstance(read[2], int)
    for bad in (True, "many", 2.5):
        with pytest.raises(UserError, match="concept_directions must be 0"):
            from_mapping(TrainConfig, {"concept_directions": bad}).validate()
    assert [describe(n) for n in (24, 0.5, AUTO)] == ["24 per layer", "50% of each layer's",
                                                      "those above each layer's mean μ"]


def test_close_rows_match_whole_words_in_any_case():
    prompts = ["a orange circle", "an Orange square", "oranges in a bowl", "a red-orange sky", "a blue square"]
    assert close_rows(prompts, ("orange",)) == [0, 1, 3]
    assert close_rows(prompts, ("orange", "blue")) == [0, 1, 3, 4]
    assert close_rows(prompts, ()) == []


def _down_ranks(path) -> dict:
    from safetensors.torch import load_file

    state = load_file(str(path))
    ranks = {}
    for key, w in state.items():
        if key.endswith("lora_down.weight"):
            s = torch.linalg.svdvals(w.double().reshape(w.shape[0], -1))  # a convolution's too
            ranks[key] = int((s > 1e-5 * s[0]).sum())
    return ranks


def test_training_keeps_every_down_projection_inside_the_directions(retain_pairs, tiny_model, loaded, tmp_path):
    from safetensors.torch import load_file

    common = dict(pairs=str(retain_pairs), model=str(tiny_model), steps=4, beta=100, lr=1e-2, lam=0.0,
                  lora=LoraConfig(rank=4, alpha=4.0))
    events = []
    train(TrainConfig(out=str(tmp_path / "plain.safetensors"), **common), model=loaded)
    train(TrainConfig(out=str(tmp_path / "dir.safetensors"), concept_directions=2, close_concepts=("orange",),
                      close_weight=3.0, **common), progress=lambda e: events.append(e.message), model=loaded)
    plain, restricted = _down_ranks(tmp_path / "plain.safetensors"), _down_ranks(tmp_path / "dir.safetensors")
    assert plain and set(plain) == set(restricted)
    assert all(r == 4 for r in plain.values())  # a gaussian init and 4 steps: full rank
    assert all(r <= 2 for r in restricted.values())  # after 4 optimiser steps, weight decay included
    ups = load_file(str(tmp_path / "dir.safetensors"))
    assert all(ups[k].abs().max() > 0 for k in ups if k.endswith("lora_up.weight"))  # it did train
    facts = decode_duo(read_metadata(tmp_path / "dir.safetensors"))
    assert (facts["concept_directions"], facts["close_concepts"], facts["close_weight"]) == (2, ["orange"], 3.0)
    assert facts["concept_directions_top_ratio"] >= 1.0 and facts["lambda_retain"] == 0.0
    widths = [w.shape[1] for k, w in ups.items() if k.endswith("lora_down.weight")]
    assert facts["concept_directions_share"] == pytest.approx(2 * len(widths) / sum(widths), abs=1e-4)
    assert "measuring the concept's input directions (2 per layer) against the retain set" in events

    train(TrainConfig(out=str(tmp_path / "auto.safetensors"), concept_directions=AUTO, **{**common, "steps": 1}),
          model=loaded)
    facts = decode_duo(read_metadata(tmp_path / "auto.safetensors"))
    assert facts["concept_directions"] == AUTO and 0 < facts["concept_directions_share"] < 1


def test_a_convolutions_down_projection_reads_its_input_as_patches_in_its_weights_order():
    from peft import LoraConfig as PeftLora, inject_adapter_in_model

    from duo_unlearn.trainer.concept_directions import ConceptDirections, layer_rows

    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3, padding=1))
    model = inject_adapter_in_model(PeftLora(r=2, target_modules=["0"], init_lora_weights="gaussian"), model)
    conv, down = model[0], model[0].lora_A["default"]
    x = torch.randn(2, 3, 6, 6, generator=g)
    rows = layer_rows(conv, x)  # one row per output position, channels·3·3 wide
    assert rows.shape == (2 * 36, 27)
    flat = down.weight.reshape(2, -1)
    assert torch.allclose(rows @ flat.T, down(x).permute(0, 2, 3, 1).reshape(-1, 2), atol=1e-5)
    q, _ = torch.linalg.qr(torch.randn(27, 4, generator=g))
    ConceptDirections({down.weight: q}, 1.0, 4 / 27).apply()
    away = rows - (rows @ q) @ q.T  # patches with no part in the kept span: the adapter reads nothing of them
    assert (away @ down.weight.reshape(2, -1).T).abs().max() < 1e-5
    assert torch.linalg.matrix_rank(down.weight.reshape(2, -1)) == 2
    assert layer_rows(torch.nn.Linear(4, 3), torch.ones(2, 7, 4)).shape == (14, 4)


def test_training_keeps_a_convolutions_down_projection_inside_the_directions(retain_pairs, tiny_model, loaded,
                                                                              tmp_path):
    common = dict(pairs=str(retain_pairs), model=str(tiny_model), steps=3, beta=100, lr=1e-2, lam=0.0,
                  lora=LoraConfig(rank=4, alpha=4.0, target_modules=("conv1", "attn1.to_q")))
    train(TrainConfig(out=str(tmp_path / "conv.safetensors"), concept_directions=2, **common), model=loaded)
    ranks = _down_ranks(tmp_path / "conv.safetensors")
    convs = [k for k in ranks if "conv1" in k]
    assert convs and all(ranks[k] <= 2 for k in ranks)  # each conv's flattened (rank, channels·3·3) weight


def test_the_same_seed_gives_the_same_directions(retain_pairs, tiny_model, loaded, tmp_path):
    from safetensors.torch import load_file

    kw = dict(pairs=str(retain_pairs), model=str(tiny_model), steps=2, beta=100, lam=0.0, concept_directions=3)
    train(TrainConfig(out=str(tmp_path / "a.safetensors"), **kw), model=loaded)
    train(TrainConfig(out=str(tmp_path / "b.safetensors"), **kw), model=loaded)
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_directions_without_a_retain_set_are_one_clear_error(pair_dir, tiny_model, tmp_path):
    with pytest.raises(UserError, match="--concept-directions needs a retain set"):
        train(TrainConfig(pairs=str(pair_dir), model=str(tiny_model), out=str(tmp_path / "x.safetensors"),
                          steps=1, concept_directions=4))
    assert not (tmp_path / "x.safetensors").exists()


def test_close_words_no_retain_prompt_uses_are_refused_before_training(retain_pairs, tiny_model, loaded, tmp_path):
    with pytest.raises(UserError, match="no retain prompt names a close concept"):
        train(TrainConfig(pairs=str(retain_pairs), model=str(tiny_model), out=str(tmp_path / "x.safetensors"),
                          steps=1, concept_directions=2, close_concepts=("crimson",), close_weight=2.0),
              model=loaded)
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("kw, message", [
    ({"concept_directions": -1}, "concept_directions must be 0"),
    ({"close_weight": -2.0, "close_concepts": ("orange",)}, "close_weight must be zero or positive"),
    ({"close_weight": 2.0}, "close_weight needs close_concepts"),
    ({"close_concepts": (" ",)}, "close_concepts must be words"),
])
def test_bad_direction_settings(kw, message):
    with pytest.raises(UserError, match=message):
        TrainConfig(**kw).validate()


def test_the_unlearn_plan_refuses_close_words_its_retain_prompts_lack(tiny_model):
    from duo_unlearn.trainer.unlearn import UnlearnConfig, plan

    cfg = UnlearnConfig(preset="custom", model=str(tiny_model), unsafe_prompts=("a red square",),
                        safe_prompts=("a blue square",), retain_prompts=("a green circle",), num_retain=3,
                        concept_directions=8, close_concepts=("orange",), close_weight=4.0)
    with pytest.raises(UserError, match="no retain prompt names a close concept"):
        plan(cfg)
    _, plans = plan(UnlearnConfig(**{**cfg.__dict__, "close_concepts": ("green",)}))
    assert (plans[0].train.concept_directions, plans[0].train.close_concepts) == (8, ("green",))
    _, plans = plan(UnlearnConfig(**{**cfg.__dict__, "num_retain": 0, "concept_directions": None}))
    assert plans[0].train.concept_directions == 0  # no retain set: the preset's directions are off


def _encodings(loaded, prompts):
    from duo_unlearn.trainer.families import get_family

    hidden = get_family(loaded.family).conditioning(loaded.pipe, prompts, "cpu", 32).kwargs["encoder_hidden_states"]
    rows = hidden.reshape(-1, hidden.shape[-1]).double()
    return rows.T @ rows / len(rows)


def test_layers_that_read_the_prompt_take_the_directions_of_the_concepts_prompts(retain_pairs, tiny_model, loaded,
                                                                                  tmp_path):
    """Cross-attention keys and values see only the prompt: there the concept is its unsafe prompt's encoding and
    what is kept the retain prompts' and the empty one's, so each down-projection lies in those directions."""
    from safetensors.torch import load_file

    out = tmp_path / "kv.safetensors"
    train(TrainConfig(pairs=str(retain_pairs), model=str(tiny_model), out=str(out), steps=2, beta=100, lr=1e-2,
                      lam=0.0, condition="unsafe", concept_directions=2,
                      lora=LoraConfig(rank=4, alpha=4.0, target_modules=("attn1.to_q", "attn2.to_k", "attn2.to_v"))),
          model=loaded)
    c_concept = _encodings(loaded, ["a red square"])
    # per retain image, as measured: the empty prompt (noised image and pure noise) twice, its own prompt once
    c_keep = (10 * _encodings(loaded, [""]) + 3 * _encodings(loaded, ["a orange circle"])
              + 2 * _encodings(loaded, ["a gray square"])) / 15
    q = top_directions(c_concept.float(), c_keep.float(), 2)[0].double()
    downs = {k: w.double() for k, w in load_file(str(out)).items() if k.endswith("lora_down.weight")}
    kv = {k: w for k, w in downs.items() if "attn2_to_k" in k or "attn2_to_v" in k}
    assert len(kv) == 2 * sum("attn1_to_q" in k for k in downs) and kv
    for key, a in kv.items():
        assert torch.linalg.norm(a - a @ q @ q.T) <= 1e-3 * torch.linalg.norm(a), key
    image_side = [a for k, a in downs.items() if "attn1_to_q" in k and a.shape[1] == q.shape[0]]
    for a in image_side:  # measured on noised images instead: other directions
        assert torch.linalg.norm(a - a @ q @ q.T) > 0.1 * torch.linalg.norm(a)


def test_directions_on_prompt_layers_without_the_prompt_are_refused_before_the_pairs_are_read(retain_pairs, tiny_model,
                                                                                              loaded, tmp_path):
    cfg = TrainConfig(pairs=str(retain_pairs), model=str(tiny_model), out=str(tmp_path / "a.safetensors"),
                      concept_directions=0.5, lora=LoraConfig(target_modules=("attn1.to_q", "attn2.to_v")))
    with pytest.raises(UserError, match=r"layers that read only the prompt \(.*attn2.to_v.*--condition unsafe"):
        train(cfg, model=loaded)
