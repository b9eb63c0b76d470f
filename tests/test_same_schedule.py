"""The one rule by which the ComfyUI node and the efficacy benchmark reuse an adapter (trainer/same_schedule.py)."""
import dataclasses

import pytest

from duo_unlearn.trainer.config import TrainConfig
from duo_unlearn.trainer.same_schedule import same_schedule

CFG = TrainConfig(kappa=5.0, steps=900, stop_every=150, stop_detector="colour:red", stop_erased=0.85)
FACTS = {"steps": 300, "max_steps": 900, "stop_every": 150, "stop_erased": 0.85, "shared_t": False,
         "beta": 9.0821, "kappa": 5.0}


def test_an_adapter_that_stopped_early_holds_the_run_that_planned_its_steps():
    assert same_schedule(FACTS, CFG)
    assert same_schedule(FACTS | {"kappa": 5.0004}, CFG)  # κ is recorded rounded


@pytest.mark.parametrize("change", [
    {"max_steps": 600}, {"stop_every": 75}, {"stop_erased": 0.95}, {"shared_t": True}, {"kappa": 3.0},
    {"kappa": None},
])
def test_any_other_schedule_is_not_reused(change):
    assert not same_schedule(FACTS | change, CFG)


def test_no_check_asked_means_none_recorded_and_all_steps_planned():
    cfg = dataclasses.replace(CFG, stop_every=0)
    facts = {k: v for k, v in FACTS.items() if k not in ("max_steps", "stop_every", "stop_erased")}
    assert same_schedule(facts | {"steps": 900}, cfg)
    assert not same_schedule(facts, cfg)  # 300 of 900 steps
    assert not same_schedule(FACTS | {"steps": 900}, cfg)  # it stopped by a check this run would not make


def test_a_given_beta_is_compared_as_beta_and_esd_has_none():
    cfg = dataclasses.replace(CFG, kappa=None, beta=500.0, stop_every=0)
    facts = {"steps": 900, "shared_t": False, "beta": 500.0, "kappa": 12.3}
    assert same_schedule(facts, cfg)
    assert not same_schedule(facts | {"beta": 250.0}, cfg)
    esd = dataclasses.replace(cfg, method="esd")
    assert same_schedule(facts | {"beta": None, "kappa": None}, esd)


def test_concept_directions_are_part_of_the_run():
    on = dataclasses.replace(CFG, concept_directions=24, close_concepts=("orange",), close_weight=6.0)
    facts = FACTS | {"concept_directions": 24, "close_concepts": ["orange"], "close_weight": 6.0}
    assert same_schedule(facts, on)
    assert not same_schedule(FACTS, on)  # trained without them
    assert not same_schedule(facts, CFG)  # trained with them, asked without
    for change in ({"concept_directions": 16}, {"close_concepts": ["yellow"]}, {"close_weight": 4.0}):
        assert not same_schedule(facts | change, on)
    # off is off, whatever close words a config still carries
    assert same_schedule(FACTS, dataclasses.replace(CFG, close_concepts=("orange",), close_weight=6.0))


def test_the_timestep_ranges_are_part_of_the_run():
    facts = {"steps": 300, "beta": 10.0, "shared_t": False, "t_range": [0, 750], "lambda_retain": 100.0,
             "retain_t_range": [0, 750]}
    assert same_schedule(facts, TrainConfig(steps=300, beta=10.0))
    assert same_schedule({k: v for k, v in facts.items() if "t_range" not in k}, TrainConfig(steps=300, beta=10.0))
    assert not same_schedule(facts, TrainConfig(steps=300, beta=10.0, t_max=500))
    held = TrainConfig(steps=300, beta=10.0, lam_retain=100.0, retain_t_min=500, retain_t_max=1000)
    assert not same_schedule(facts, held)
    assert same_schedule({**facts, "retain_t_range": [500, 1000]}, held)
    # without a retain term the band draws nothing: an adapter is not told apart by it
    assert same_schedule({**facts, "retain_t_range": [500, 1000]}, TrainConfig(steps=300, beta=10.0))


def test_the_conditioning_and_the_layers_named_are_part_of_the_run():
    from duo_unlearn.trainer.config import LoraConfig

    kv = ["attn1.to_q", "attn2.to_k"]
    cfg = TrainConfig(steps=300, beta=10.0, condition="unsafe", lora=LoraConfig(target_modules=tuple(kv)))
    facts = {"steps": 300, "beta": 10.0, "shared_t": False, "condition": "unsafe", "target_modules": kv}
    assert same_schedule(facts, cfg)
    assert not same_schedule(facts | {"condition": "empty"}, cfg)
    assert not same_schedule(facts | {"target_modules": ["attn1.to_q"]}, cfg)
    assert not same_schedule({k: v for k, v in facts.items() if k != "target_modules"}, cfg)  # from before: default
    # a config naming no layers takes the family's, which adapters from before did not record
    assert same_schedule(facts | {"condition": "empty"}, TrainConfig(steps=300, beta=10.0))
    assert not same_schedule(facts, TrainConfig(steps=300, beta=10.0))  # the paper's empty prompt
