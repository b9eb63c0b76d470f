"""The tab's small parts: output names, the one-job runner, adapter discovery, install.py's plan."""
import importlib.util
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from duo_unlearn.extension.backends import Backend, read_header
from duo_unlearn.extension.jobs import Busy, JobRunner
from duo_unlearn.extension.names import adapter_path, sanitise_name
from duo_unlearn.trainer.errors import Cancelled, UserError
from duo_unlearn.trainer.progress import ProgressEvent, report

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name, expected", [
    ("duo_red", "duo_red"), ("  my adapter ", "my_adapter"), ("red.safetensors", "red"), ("été-1", "été-1"),
    ("a*b?c", "a_b_c"), ("v1.0", "v1.0"),
])
def test_sanitise_keeps_plain_names(name, expected):
    assert sanitise_name(name) == expected


@pytest.mark.parametrize("name, message", [
    ("../x", "points into another folder"), ("a/b", "points into another folder"),
    ("..\\x", "points into another folder"), ("..", "points into another folder"), ("", "empty"),
    ("   ", "empty"), ("***", "no usable characters"), ("con", "reserved"), ("x" * 150, "characters long"),
    ("a\x00b", "control characters"),
])
def test_sanitise_refuses_with_a_message(name, message):
    with pytest.raises(UserError, match=message):
        sanitise_name(name)


def test_adapter_path_stays_in_the_lora_folder(tmp_path):
    lora = tmp_path / "Lora"
    lora.mkdir()
    assert adapter_path(lora, "duo red") == lora.resolve() / "duo_red.safetensors"
    outside = tmp_path / "elsewhere.safetensors"
    os.symlink(outside, lora / "linked.safetensors")
    with pytest.raises(UserError, match="link to somewhere else"):
        adapter_path(lora, "linked")
    with pytest.raises(UserError, match="another folder"):
        adapter_path(lora, "../escape")


def _steps(n, delay=0.0, fail_at=None):
    def fn(progress=None):
        for i in range(n):
            if fail_at == i:
                raise UserError("bad input at step %d" % i)
            report(progress, ProgressEvent("train", i + 1, n, logs={"loss": 1.0 / (i + 1)}))
            time.sleep(delay)
        return "finished"
    return fn


def test_runner_runs_one_job_and_reports_progress():
    runner = JobRunner()
    gate = threading.Event()

    def slow(progress=None):
        report(progress, ProgressEvent("train", 1, 4, "first step"))
        gate.wait(10)
        report(progress, ProgressEvent("train", 4, 4))
        return 42

    job = runner.start("unlearn", "job A", slow)
    for _ in range(100):
        if job.event.step == 1:
            break
        time.sleep(0.01)
    assert job.running and "training 1/4" in job.summary()
    with pytest.raises(Busy, match="already running"):
        runner.start("unlearn", "job B", slow)
    with pytest.raises(Busy):
        runner.run_here("compare", "compare", lambda progress=None: None)
    gate.set()
    assert job.wait(10)
    assert job.state == "done" and job.result == 42 and job.fraction() == 1.0
    assert runner.start("unlearn", "job C", _steps(2)).wait(10)  # free again


def test_runner_cancel_stops_the_loop_at_its_next_report():
    runner = JobRunner()
    job = runner.start("unlearn", "long", _steps(10_000, delay=0.001))
    while job.event.step < 3:
        time.sleep(0.005)
    assert runner.cancel()
    assert job.wait(10)
    assert job.state == "cancelled" and "no adapter" in job.error
    assert job.event.step < 10_000
    assert not runner.cancel()  # nothing left to cancel


def test_runner_turns_errors_into_messages(capsys):
    runner = JobRunner()
    job = runner.run_here("unlearn", "x", _steps(5, fail_at=2))
    assert job.state == "failed" and job.error == "bad input at step 2"

    def crash(progress=None):
        raise RuntimeError("CUDA out of memory")
    job = runner.run_here("unlearn", "x", crash)
    assert job.state == "failed" and job.error == "RuntimeError: CUDA out of memory"
    assert "Traceback" in capsys.readouterr().err  # the host's console keeps the details


def test_eta_from_the_rate_of_the_current_stage():
    runner = JobRunner()
    job = runner.start("unlearn", "eta", _steps(40, delay=0.01))
    while job.event.step < 10:
        time.sleep(0.005)
    eta = job.eta_seconds()
    assert eta is not None and 0.05 < eta < 5
    assert "ETA" in job.summary()
    job.wait(10)


def _fake_adapter(path: Path, duo: dict | None):
    meta = {f"duo.{k}": json.dumps(v) for k, v in (duo or {}).items()}
    meta["ss_network_dim"] = "4"
    header = json.dumps({"__metadata__": meta}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header)


def test_adapters_are_found_by_their_duo_metadata(tmp_path):
    lora = tmp_path / "Lora"
    (lora / "sub").mkdir(parents=True)
    _fake_adapter(lora / "red.safetensors", {"concept": "red", "beta": 500, "steps": 10, "pairs": 8})
    _fake_adapter(lora / "sub" / "gun.safetensors", {"concept": "gun", "beta": 1000, "steps": 5, "pairs": 4})
    _fake_adapter(lora / "plain_style.safetensors", None)  # an ordinary LoRA: not listed
    (lora / "broken.safetensors").write_bytes(b"\xff" * 20)
    _fake_adapter(lora / ".red.safetensors.tmp", {"concept": "red"})
    backend = Backend(lora)
    names = {a.name: a for a in backend.list_adapters()}
    assert set(names) == {"red", "gun"}
    assert names["red"].duo["beta"] == 500 and names["red"].row()["rank"] == "4"
    assert read_header(lora / "red.safetensors")["ss_network_dim"] == "4"
    with pytest.raises(UserError, match="plain_style.safetensors is a LoRA without DUO metadata"):
        backend.find_adapter("plain_style")
    with pytest.raises(UserError, match="broken.safetensors cannot be read as a DUO adapter"):
        backend.find_adapter("broken")
    with pytest.raises(UserError, match="'gone' is not in"):
        backend.find_adapter("gone")


def _load_install():
    spec = importlib.util.spec_from_file_location("duo_install", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # __name__ is not __main__ and no `launch`: nothing is installed
    return module


def test_install_plans_only_missing_and_never_host_packages(tmp_path):
    install = _load_install()
    reqs = ["torch>=99", "torchvision", "gradio>=99", "xformers", "safetensors>=0.1", "numpy>=999",
            "surely-not-installed-pkg>=1.0", "tomli>=2.0; python_version < '3.0'"]
    missing, notes = install.plan(reqs)
    assert missing == ["surely-not-installed-pkg>=1.0"]
    assert len(notes) == 1 and "numpy" in notes[0] and "leaving the host's version alone" in notes[0]
    pins = Path(install.constraints())
    try:
        text = pins.read_text()
        assert "torch==" in text and "gradio==" in text
    finally:
        pins.unlink()
    listed = install.read_requirements()
    assert not [r for r in listed if install._NAME.match(r).group(1).lower() in install.HOST_OWNED]


def test_install_uses_launch_run_pip_inside_a1111(tmp_path, monkeypatch):
    install = _load_install()
    calls = []
    fake_launch = type(sys)("launch")
    fake_launch.run_pip = lambda command, desc=None: calls.append((command, desc))
    monkeypatch.setitem(sys.modules, "launch", fake_launch)
    req = tmp_path / "requirements.txt"
    req.write_text("torch\ngradio==3.41.2\nsafetensors\nsurely-not-installed-pkg\n")
    monkeypatch.setattr(install, "REQUIREMENTS", str(req))
    assert install.main() == 0
    assert len(calls) == 1 and "surely-not-installed-pkg" in calls[0][0] and "-c" in calls[0][0]


def test_cli_ui_listens_on_localhost_unless_told(monkeypatch, tmp_path):
    from duo_unlearn.extension import app
    from duo_unlearn.trainer.cli import main

    seen = {}
    monkeypatch.setattr(app, "serve", lambda **kw: seen.update(kw))
    assert main(["ui", "--lora-dir", str(tmp_path)]) == 0
    assert seen == {"host": "127.0.0.1", "port": None, "lora_dir": str(tmp_path), "work_dir": None,
                    "model": "testbed", "share": False}
    assert main(["ui", "--host", "0.0.0.0", "--port", "7999", "--share"]) == 0
    assert seen["host"] == "0.0.0.0" and seen["port"] == 7999 and seen["share"] is True


def test_shim_loads_this_checkout_even_if_another_duo_unlearn_is_imported(tmp_path):
    """A1111 shares one interpreter between extensions: a stale `duo_unlearn` in sys.modules must not win."""
    import subprocess

    code = (
        "import sys, types, importlib.util\n"
        "old = types.ModuleType('duo_unlearn'); old.__file__ = '/elsewhere/duo_unlearn/__init__.py'\n"
        "sys.modules['duo_unlearn'] = old; sys.modules['duo_unlearn.extension'] = types.ModuleType('x')\n"
        f"spec = importlib.util.spec_from_file_location('shim', {str(ROOT / 'scripts' / 'duo_unlearn_tab.py')!r})\n"
        "shim = importlib.util.module_from_spec(spec); spec.loader.exec_module(shim)\n"
        "pkg = shim.load_package()\n"
        "from duo_unlearn.extension.names import sanitise_name\n"
        "print(pkg.__file__, sanitise_name('a b'), 'modules' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    file, name, has_modules = out.stdout.split()
    assert Path(file) == ROOT / "__init__.py" and name == "a_b" and has_modules == "False"


def test_install_without_launch_calls_pip_with_constraints(tmp_path, monkeypatch):
    """ComfyUI-Manager runs install.py with plain Python: pip in a subprocess, host packages pinned."""
    install = _load_install()
    monkeypatch.delitem(sys.modules, "launch", raising=False)
    req = tmp_path / "requirements.txt"
    req.write_text("torch\nsafetensors\nsurely-not-installed-pkg>=2\n")
    monkeypatch.setattr(install, "REQUIREMENTS", str(req))
    seen = []

    def fake_run(cmd, check):
        pins = Path(cmd[cmd.index("-c") + 1]).read_text()
        seen.append((cmd, pins))

    monkeypatch.setattr(install.subprocess, "run", fake_run)
    assert install.main() == 0
    (cmd, pins), = seen
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"] and cmd[-1] == "surely-not-installed-pkg>=2"
    assert "torch==" in pins
