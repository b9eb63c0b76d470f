"""The screening benchmarks' own logic: which steps the band diagnosis runs the adapter at, and how a screen reads
its overrides (both scripts need the trained test-bed adapters for anything more, which the benchmarks make)."""
from __future__ import annotations

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


def test_the_seed_spread_gives_each_readings_range_and_its_pooled_value():
    spread = benchmark("seed_spread_testbed")
    sets = [{"orange_vs_base": 0.9, "orange_n": 36, "background_kept": 0.90, "shape_accuracy_vs_base": 1.0,
             "colour_kept": 0.8, "others_n": 180},
            {"orange_vs_base": 1.0, "orange_n": 36, "background_kept": 0.96, "shape_accuracy_vs_base": 0.9,
             "colour_kept": 0.9, "others_n": 180}]
    assert spread.pooled(sets, "background_kept", "others_n") == pytest.approx(0.93)
    line = spread.summary("duo_preset", sets)
    assert line.startswith("duo_preset: orange ÷ base 0.900–1.000 (pooled 0.950)")
    assert "background kept 0.900–0.960 (pooled 0.930)" in line and "shape acc. ÷ base 0.900–1.000" in line
    assert "red prompts" not in line  # these sets predate the red prompts' readings
    red = [{"concept_background_kept": 32 / 36, "concept_shape_kept": 0.5, "concept_n": 36},
           {"concept_background_kept": 35 / 36, "concept_shape_kept": 1.0, "concept_n": 36}]
    line = spread.summary("duo_preset", [a | b for a, b in zip(sets, red)])
    assert line.endswith("red prompts' background 0.889–0.972 (pooled 0.931); "
                         "red prompts' shape 0.500–1.000 (pooled 0.750)")
