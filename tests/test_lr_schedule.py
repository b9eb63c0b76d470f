"""Learning-rate schedules: what the CLI and config files accept, the rate each step trains at, the record in the
adapter (a resumed run going on with its schedule: test_train's resume test)."""
import pytest
from safetensors import safe_open

from duo_unlearn.trainer.cli import main
from duo_unlearn.trainer.config import TrainConfig
from duo_unlearn.trainer.lr_schedule import SCHEDULES
from duo_unlearn.trainer.same_schedule import same_schedule
from duo_unlearn.trainer.train import train


def test_every_schedule_offered_is_one_diffusers_builds():
    from diffusers.optimization import SchedulerType

    assert set(SCHEDULES) <= {s.value for s in SchedulerType}
    assert SCHEDULES[0] == "constant" == TrainConfig().lr_scheduler  # the official scripts' default


@pytest.mark.parametrize("flags, expect", [
    (["--lr-scheduler", "cosine_annealing"], "lr_scheduler must be one of constant, constant_with_warmup"),
    (["--lr-warmup-steps", "2"], "lr_warmup_steps needs a schedule with a warm-up"),
    (["--lr-scheduler", "cosine", "--lr-warmup-steps", "5"], "lr_warmup_steps must be a whole number from 0 to"),
    (["--lr-scheduler", "cosine_with_restarts", "--lr-cycles", "0"], "lr_cycles must be a positive whole number"),
])
def test_a_bad_schedule_gets_one_line_and_exit_2(flags, expect, capsys, tmp_path, tiny_model, pair_dir):
    out = tmp_path / "out.safetensors"
    code = main(["train", "--pairs", str(pair_dir), "--model", str(tiny_model), "--out", str(out), "--steps", "5",
                 *flags])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and expect in err, err
    assert not out.exists()


def test_a_config_file_sets_the_schedule_and_unlearn_takes_it_too(capsys, tmp_path, tiny_model, pair_dir):
    cfg = tmp_path / "c.toml"
    cfg.write_text('lr_scheduler = "linear"\nlr_warmup_steps = 7\n')
    code = main(["train", "--pairs", str(pair_dir), "--model", str(tiny_model), "--out",
                 str(tmp_path / "o.safetensors"), "--steps", "5", "--config", str(cfg)])
    assert code == 2 and "from 0 to steps - 1 (4), got 7" in capsys.readouterr().err  # read from the file
    code = main(["unlearn", "--preset", "testbed-red", "--model", str(tiny_model), "--out",
                 str(tmp_path / "u.safetensors"), "--steps", "3", "--lr-scheduler", "warm"])
    assert code == 2 and "lr_scheduler must be one of" in capsys.readouterr().err


def test_each_step_trains_at_the_scheduled_rate_and_the_adapter_records_the_schedule(tiny_model, pair_dir,
                                                                                    tmp_path):
    out = tmp_path / "linear.safetensors"
    result = train(TrainConfig(pairs=str(pair_dir), model=str(tiny_model), out=str(out), steps=6, lr=1e-3,
                               lr_scheduler="linear", lr_warmup_steps=2))
    # diffusers' linear schedule: up from 0 over the warm-up, then down to 0 at the last step
    assert [h["lr"] for h in result.history] == pytest.approx([0, 5e-4, 1e-3, 7.5e-4, 5e-4, 2.5e-4])
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert (meta["duo.lr_scheduler"], meta["duo.lr_warmup_steps"], meta["duo.lr"]) == ("linear", "2", "0.001")
    # and under kohya's names, which the hosts' metadata views show
    assert (meta["ss_lr_scheduler"], meta["ss_lr_warmup_steps"], meta["ss_learning_rate"], meta["ss_unet_lr"],
            meta["ss_steps"], meta["ss_max_train_steps"], meta["ss_seed"]) == ("linear", "2", "0.001", "0.001", "6",
                                                                               "6", "0")

    constant = train(TrainConfig(pairs=str(pair_dir), model=str(tiny_model), out=str(tmp_path / "c.safetensors"),
                                 steps=3, lr=1e-3))
    assert [h["lr"] for h in constant.history] == [1e-3] * 3


def test_an_adapter_trained_on_another_schedule_is_not_the_same_run():
    cfg = TrainConfig(steps=300, beta=10.0)
    facts = {"steps": 300, "beta": 10.0, "shared_t": False}  # an adapter from before schedules: constant
    assert same_schedule(facts, cfg)
    assert not same_schedule(facts, TrainConfig(steps=300, beta=10.0, lr_scheduler="cosine"))
    cosine = {**facts, "lr_scheduler": "cosine", "lr_warmup_steps": 10, "lr_cycles": 1}
    assert same_schedule(cosine, TrainConfig(steps=300, beta=10.0, lr_scheduler="cosine", lr_warmup_steps=10))
    assert not same_schedule(cosine, TrainConfig(steps=300, beta=10.0, lr_scheduler="cosine", lr_warmup_steps=20))
