"""The screening benchmarks' own logic: which steps the band diagnosis runs the adapter at, and how a screen reads
its overrides (both scripts need the trained test-bed adapters for anything more, which the benchmarks make)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from test_testbed import benchmark


class FakePipe:
    """Records whether the adapter was on at each denoising step, as diffusers' callback order has it: the callback
    runs after step i, before step i + 1."""

    def __init__(self, timesteps):
        self.scheduler = SimpleNamespace(set_timesteps=lambda n: None, timesteps=list(timesteps))
        self.on = True
        self.seen = []

    def enable_lora(self):
        self.on = True

    def disable_lora(self):
        self.on = False

    def __call__(self, prompts, num_inference_steps, guidance_scale, generator, callback_on_step_end):
        assert len(generator) == len(prompts)
        run = []
        for i, t in enumerate(self.scheduler.timesteps):
            run.append((t, self.on))
            callback_on_step_end(self, i, t, {})
        self.seen.append(run)
        return SimpleNamespace(images=list(prompts))


def test_band_switches_the_adapter_before_each_step_by_its_timestep():
    bands_mod = benchmark("sampling_bands_testbed")
    timesteps = [961, 801, 641, 481, 321, 161, 1]
    bands = bands_mod.bands([500, 750])
    assert set(bands) == {"base", "every step", "t ≥ 500", "t < 500", "t ≥ 750", "t < 750"}
    for name, expect in [("t ≥ 500", [True, True, True, False, False, False, False]),
                         ("t < 750", [False, False, True, True, True, True, True]),
                         ("base", [False] * 7), ("every step", [True] * 7)]:
        pipe = FakePipe(timesteps)
        pipe.on = not expect[0]  # whatever state the pipe was left in, the first step follows the band
        out = bands_mod.sample(pipe, ["a", "b"], 2, 0, len(timesteps), 5.0, bands[name])
        assert out == ["a", "a", "b", "b"]
        assert [on for _, on in pipe.seen[0]] == expect, name
        assert pipe.on  # the adapter is left on, as evaluate leaves it


def test_a_long_list_is_sampled_in_chunks_each_starting_from_its_band():
    bands_mod = benchmark("sampling_bands_testbed")
    pipe = FakePipe([900, 100])
    out = bands_mod.sample(pipe, [f"p{i}" for i in range(9)], 2, 0, 2, 5.0, bands_mod.bands([500])["t < 500"])
    assert len(out) == 18 and len(pipe.seen) == 2  # chunks of 16
    assert all([on for _, on in run] == [False, True] for run in pipe.seen)


def test_screen_overrides_read_json_values_and_text():
    screen = benchmark("screen_testbed")
    got = screen.parse_overrides(["close_weight=8", "concept_directions=auto", "target_modules=[\"attn1.to_q\"]",
                                  "on_policy_pairs=true"])
    assert got == {"close_weight": 8, "concept_directions": "auto", "target_modules": ("attn1.to_q",),
                   "on_policy_pairs": True}
    with pytest.raises(SystemExit, match="field=value"):
        screen.parse_overrides(["kappa"])


def test_screen_and_seed_spread_pool_the_colour_readings_as_the_tables_pooled_readings_do():
    """One pooling for every script: a share sums its images over the sets; a ratio to the base model sums the
    images read right against the base model's, not the mean of the sets' ratios; a reading older records lack is
    left out rather than guessed."""
    screen, spread, readings = (benchmark("screen_testbed"), benchmark("seed_spread_testbed"),
                                benchmark("colour_readings"))
    assert screen.READINGS[3:] == tuple(r.key for r in readings.READINGS)
    base = [{"orange_accuracy": 32 / 36, "orange_n": 36, "shape_accuracy": 0.8, "others_n": 180},
            {"orange_accuracy": 24 / 36, "orange_n": 36, "shape_accuracy": 0.8, "others_n": 180}]
    sets = [{"orange_accuracy": 32 / 36, "orange_vs_base": 1.0, "orange_n": 36, "background_kept": 0.90,
             "shape_accuracy": 0.8, "shape_accuracy_vs_base": 1.0, "colour_kept": 0.8, "others_n": 180},
            {"orange_accuracy": 18 / 36, "orange_vs_base": 0.75, "orange_n": 36, "background_kept": 0.96,
             "shape_accuracy": 0.72, "shape_accuracy_vs_base": 0.9, "colour_kept": 0.9, "others_n": 180}]
    got = readings.pool(sets, base)
    assert screen.pool(sets, base) == got == spread.pool(sets, base)
    assert got["orange_vs_base"] == pytest.approx(50 / 56) and got["orange_vs_base_count"] == [50, 56]  # not 0.875
    assert got["background_kept"] == pytest.approx(0.93) and got["background_kept_count"] == [335, 360]
    assert "concept_erased" not in got and "background_right_kept" not in got  # these sets predate them
    line = spread.summary("duo_preset", sets, base)
    assert line.startswith("duo_preset: orange kept (÷ base) 0.750–1.000 (pooled 0.893)")
    assert "background kept 0.900–0.960 (pooled 0.930)" in line and "shape accuracy ÷ base 0.900–1.000" in line
    assert "red prompts" not in line
    red = [{"concept_background_kept": 32 / 36, "concept_shape_kept": 0.5, "concept_erased": 30 / 36,
            "concept_n": 36},
           {"concept_background_kept": 35 / 36, "concept_shape_kept": 1.0, "concept_erased": 1.0, "concept_n": 36}]
    line = spread.summary("duo_preset", [a | b for a, b in zip(sets, red)], base)
    assert line.endswith("red prompts: background kept 0.889–0.972 (pooled 0.931); red prompts: shape kept "
                         "0.500–1.000 (pooled 0.750); red prompts: red erased 0.833–1.000 (pooled 0.917)")
    with pytest.raises(SystemExit):
        screen.main(["--name", "x", "--kept-seeds", "5000,six"])


def _kohya_keys(block: str) -> set:
    return {f"lora_unet_{block}_transformer_blocks_0_attn1_to_{p}.{w}" for p in ("q", "v")
            for w in ("lora_down.weight", "lora_up.weight", "alpha")}


def test_block_ablation_leaves_out_or_keeps_each_attention_block_in_unet_order():
    ablation = benchmark("block_ablation_testbed")
    blocks = ["up_blocks_0_attentions_1", "mid_block_attentions_0", "down_blocks_1_attentions_0",
              "up_blocks_0_attentions_0", "down_blocks_0_attentions_0"]
    keys = set().union(*map(_kohya_keys, blocks)) | {"lora_te_text_model_encoder_layers_0_mlp_fc1.alpha"}
    assert ablation.block_of("lora_unet_up_blocks_0_attentions_1_transformer_blocks_0_attn1_to_q.alpha") \
        == "up_blocks_0_attentions_1"
    assert ablation.block_of("lora_te_text_model_encoder_layers_0_mlp_fc1.alpha") is None

    kept = ablation.variants(keys, ["without", "only"])
    order = ["down_blocks_0_attentions_0", "down_blocks_1_attentions_0", "mid_block_attentions_0",
             "up_blocks_0_attentions_0", "up_blocks_0_attentions_1"]
    assert list(kept) == ["whole"] + [f"{m} {b}" for b in order for m in ("without", "only")]
    assert kept["whole"] == keys
    for b in blocks:
        assert kept[f"only {b}"] == _kohya_keys(b)
        assert kept[f"without {b}"] == keys - _kohya_keys(b)  # the text encoder's keys stay in every "without"
    assert list(ablation.variants(keys, ["without"])) == ["whole"] + [f"without {b}" for b in order]


def test_block_ablation_reads_resnet_blocks_in_unet_order_beside_attention_blocks():
    """The SD 1.x preset's adapter sits on ResNet convolutions; within a level the UNet runs resnets_i, then
    attentions_i."""
    ablation = benchmark("block_ablation_testbed")
    assert ablation.block_of("lora_unet_mid_block_resnets_1_conv2.lora_down.weight") == "mid_block_resnets_1"
    assert ablation.block_of("lora_unet_down_blocks_1_resnets_0_conv1.alpha") == "down_blocks_1_resnets_0"
    assert ablation.block_of("lora_unet_time_embedding_linear_1.alpha") is None
    keys = {f"lora_unet_{b}_conv1.alpha" for b in ("up_blocks_0_resnets_1", "mid_block_resnets_1",
                                                    "down_blocks_1_resnets_0", "mid_block_resnets_0")}
    keys |= {"lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.alpha",
             "lora_unet_down_blocks_1_attentions_0_proj_in.alpha"}
    assert list(ablation.variants(keys, ["without"])) == ["whole"] + [f"without {b}" for b in (
        "down_blocks_1_resnets_0", "down_blocks_1_attentions_0", "mid_block_resnets_0", "mid_block_attentions_0",
        "mid_block_resnets_1", "up_blocks_0_resnets_1")]


def test_block_ablation_copies_keep_the_metadata_and_only_their_keys(tmp_path):
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    ablation = benchmark("block_ablation_testbed")
    keys = _kohya_keys("mid_block_attentions_0") | _kohya_keys("up_blocks_0_attentions_1")
    adapter = tmp_path / "a.safetensors"
    save_file({k: torch.full((2, 2), float(i)) for i, k in enumerate(sorted(keys))}, str(adapter),
              metadata={"ss_network_dim": "2"})
    (tmp_path / "out").mkdir()
    metadata, tensors = ablation.read_adapter(adapter)
    copies = {name: {k: tensors[k] for k in ks} for name, ks in ablation.variants(keys, ["only"]).items()}
    paths = ablation.write_copies(copies, metadata, tmp_path / "out")
    assert len(set(paths.values())) == 3
    for name, path in paths.items():
        with safe_open(str(path), "pt") as f:
            assert f.metadata() == {"ss_network_dim": "2"}
            assert set(f.keys()) == ablation.variants(keys, ["only"])[name]
            for k in f.keys():
                assert torch.equal(f.get_tensor(k), torch.full((2, 2), float(sorted(keys).index(k))))


def test_rotated_copies_keep_each_layers_change_size_and_turn_only_the_side_asked():
    import torch

    ablation = benchmark("block_ablation_testbed")
    g = torch.Generator().manual_seed(3)
    base = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_"
    tensors = {f"{base}q.lora_down.weight": torch.randn(4, 16, generator=g),
               f"{base}q.lora_up.weight": torch.randn(8, 4, generator=g),
               f"{base}q.alpha": torch.tensor(4.0),
               f"{base}v.lora_down.weight": torch.randn(4, 6, 3, 3, generator=g),  # a convolution's patches
               f"{base}v.lora_up.weight": torch.randn(6, 4, 1, 1, generator=g)}

    def delta(t, p):
        return t[f"{p}.lora_up.weight"].flatten(1) @ t[f"{p}.lora_down.weight"].flatten(1)

    for turn, up_moves, down_moves in (("writes", True, False), ("reads", False, True), ("both", True, True)):
        turned = ablation.rotated(tensors, turn, seed=0)
        assert turned.keys() == tensors.keys()
        assert torch.equal(turned[f"{base}q.alpha"], tensors[f"{base}q.alpha"])
        for layer in (f"{base}q", f"{base}v"):
            for side, moves in (("up", up_moves), ("down", down_moves)):
                key = f"{layer}.lora_{side}.weight"
                assert turned[key].shape == tensors[key].shape
                assert torch.equal(turned[key], tensors[key]) is not moves
            before, after = delta(tensors, layer), delta(turned, layer)
            assert not torch.allclose(before, after, atol=1e-3)  # the change points elsewhere ...
            torch.testing.assert_close(torch.linalg.svdvals(after), torch.linalg.svdvals(before),
                                       rtol=1e-4, atol=1e-4)  # ... with the same size in every direction
        again = ablation.rotated(tensors, turn, seed=0)
        assert all(torch.equal(again[k], turned[k]) for k in tensors)
    only_v = ablation.rotated(tensors, "both", seed=0, layers=("to_v",))
    whole = ablation.rotated(tensors, "both", seed=0)
    for k in tensors:  # the other layers untouched, the named ones turned as in the whole copy
        assert torch.equal(only_v[k], whole[k] if "to_v" in k else tensors[k])
    other = ablation.rotated(tensors, "both", seed=1)
    assert not torch.equal(other[f"{base}q.lora_up.weight"], whole[f"{base}q.lora_up.weight"])


def test_rotated_mode_writes_one_copy_per_turn_and_seed_with_the_metadata(tmp_path):
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    ablation = benchmark("block_ablation_testbed")
    keys = _kohya_keys("mid_block_attentions_0")
    adapter = tmp_path / "a.safetensors"
    save_file({k: torch.ones(2, 2) for k in keys}, str(adapter), metadata={"ss_network_dim": "2"})
    metadata, tensors = ablation.read_adapter(adapter)
    paths = ablation.write_copies(ablation.rotated_copies(tensors, [0, 1]), metadata, tmp_path)
    assert list(paths) == [f"{t} rotated, seed {s}" for s in (0, 1) for t in ("writes", "reads", "both")]
    named = ablation.rotated_copies(tensors, [2], turns=("writes",), layers=("to_v",))
    assert list(named) == ["writes rotated (to_v), seed 2"]
    for path in paths.values():
        with safe_open(str(path), "pt") as f:
            assert f.metadata() == {"ss_network_dim": "2"} and set(f.keys()) == keys


def test_oracle_relabels_only_the_concepts_shapes_and_keeps_their_place_and_background():
    import numpy as np

    from duo_unlearn.trainer.detectors.colour import read_image
    from duo_unlearn.trainer.testbed.shapes import make_dataset

    oracle = benchmark("oracle_testbed")
    images, _, specs = make_dataset(60, seed=3)
    out, changed = oracle.relabelled(images, specs, seed=4)
    red = [i for i, s in enumerate(specs) if s.colour == "red"]
    assert changed == len(red) > 0
    for i, spec in enumerate(specs):
        if i not in red:
            assert np.array_equal(out[i], images[i])
            continue
        now, was = read_image(out[i]), read_image(images[i])
        assert now.colour in oracle.REPLACEMENTS
        assert (now.background, now.shape) == (was.background, was.shape) == (spec.background, spec.shape)
    again, _ = oracle.relabelled(images, specs, seed=4)
    assert np.array_equal(again, out)


def test_oracle_lora_file_is_the_tuned_unet_at_full_rank_and_its_svd_truncation_at_a_rank(tmp_path):
    import copy

    import torch

    from duo_unlearn.trainer.models import load_model

    oracle = benchmark("oracle_testbed")
    pipe = load_model("testbed").pipe
    layers = oracle.weight_layers(pipe.unet)
    base = {n: m.weight.detach().clone() for n, m in layers.items()}
    tuned_unet = copy.deepcopy(pipe.unet)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a different rank of change per layer, and one layer left as it was
        for k, (name, m) in enumerate(oracle.weight_layers(tuned_unet).items()):
            if k:
                m.weight.add_(0.01 * torch.randn(m.weight.shape, generator=gen))
    tuned = {n: m.weight.detach() for n, m in oracle.weight_layers(tuned_unet).items()}
    unchanged = next(iter(layers))

    factors = oracle.delta_lora(base, tuned, rank=4)
    assert f"{unchanged}.lora_A.weight" not in factors
    conv = next(n for n, m in layers.items() if isinstance(m, torch.nn.Conv2d) and n != unchanged)
    down, up = factors[f"{conv}.lora_A.weight"], factors[f"{conv}.lora_B.weight"]
    assert down.shape[0] == up.shape[1] == 4 and up.shape[2:] == (1, 1)
    delta = (tuned[conv] - base[conv]).reshape(len(up), -1).double()
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    best = (u[:, :4] * s[:4]) @ vh[:4]
    assert torch.allclose(up.reshape(len(up), 4).double() @ down.reshape(4, -1).double(), best, atol=1e-5)

    path = oracle.write_lora(oracle.delta_lora(base, tuned), tmp_path / "full.safetensors", "test")
    pipe.load_lora_weights(str(path), adapter_name="full")
    probe = torch.randn(2, 4, 16, 16, generator=gen)
    tokens = pipe.tokenizer(["a red circle", "a blue square on a gray background"], padding="max_length",
                            max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        states, t = pipe.text_encoder(tokens)[0], torch.tensor([900, 100])
        got, want = pipe.unet(probe, t, states).sample, tuned_unet(probe, t, states).sample
        pipe.disable_lora()
        before = pipe.unet(probe, t, states).sample
    scale = want.abs().max()
    assert (before - want).abs().max() / scale > 1e-2  # the change is there to be reproduced
    assert (got - want).abs().max() / scale < 1e-4


def test_background_changes_are_sorted_into_errors_made_mended_and_wrong_to_wrong():
    truth = benchmark("background_truth_testbed")
    asked = ["gray", "gray", "white", "black", "black", "white"]
    base = ["gray", "black", "white", "gray", "white", "gray"]
    now = ["black", "gray", "white", "white", "black", "gray"]
    r = truth.sort_changes(asked, base, now)
    assert (r["images"], r["as_asked"], r["changed"]) == (6, 3, 4)
    # gray→black where gray was asked: made wrong; black→gray and white→black where gray/black were asked: mended;
    # gray→white where black was asked: one wrong background for another; the last image is unchanged
    assert (r["made_wrong"], r["mended"], r["wrong_to_wrong"]) == (1, 2, 1)
    assert r["transitions"] == {"gray → black": 1, "black → gray": 1, "gray → white": 1, "white → black": 1}
    with pytest.raises(ValueError):
        truth.sort_changes(asked, base, now[:-1])


def test_shape_changes_tally_counts_each_asked_shape_against_the_base_models_image():
    shapes = benchmark("shape_changes_testbed")
    truth = [("blue", "square", "white")] * 3 + [("blue", "triangle", "gray")] * 2 + [("purple", "square", "black")]
    base = ["square", "square", "circle", "triangle", "circle", "square"]
    now = ["circle", "square", "square", "triangle", "circle", "circle"]
    one = shapes.tally(truth, base, now)
    assert one["cells"]["blue square"] == {"images": 3, "base_right": 2, "made_wrong": 1, "mended": 1}
    assert one["cells"]["blue triangle"] == {"images": 2, "base_right": 1, "made_wrong": 0, "mended": 0}
    assert one["cells"]["purple square"] == {"images": 1, "base_right": 1, "made_wrong": 1, "mended": 0}
    assert one["changes"] == {"square → circle": 2}  # a mended image is not a change made wrong

    two = shapes.merged([one, shapes.tally(truth, base, base)])
    assert two["cells"]["blue square"] == {"images": 6, "base_right": 4, "made_wrong": 1, "mended": 1}
    assert two["changes"] == {"square → circle": 2}
    text = shapes.markdown("duo_preset", [0, 1000], two, ["blue", "purple"], ["circle", "square", "triangle"])
    assert "| blue | – | 1 / 4 (+1) | 0 / 2 (+0) |" in text
    assert "| purple | – | 1 / 2 (+0) | – |" in text
    assert "| all | 0 / 0 | 2 / 6 | 0 / 2 |" in text


def test_shape_changes_refuses_a_row_the_table_lacks_and_a_missing_adapter(tmp_path, capsys):
    shapes = benchmark("shape_changes_testbed")
    table = tmp_path / "table.json"
    methods = [{"name": "duo_preset", "kind": "adapter"}]
    table.write_text(json.dumps({"report": {"methods": methods, "settings": {"seed": 0}}}))
    for argv, said in ((["--row", "nope"], "not an adapter row of the saved table: nope"),
                       (["--row", "duo_preset"], "no adapter"),
                       (["--seed-sets", "0,x"], "comma-separated integers")):
        with pytest.raises(SystemExit) as e:
            shapes.main(argv + ["--table", str(table), "--work", str(tmp_path)])
        assert e.value.code == 2
        assert said in capsys.readouterr().err
