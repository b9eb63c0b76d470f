"""benchmarks/gpu_memory.py --tiny: the GPU benchmark's whole path (random-weight family build, pair dataset, the
project's trainer under each precision/checkpointing choice, the official-style step, the table) on the CPU, so the
script is known to run when a GPU is there to measure."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_memory.py"


@pytest.mark.slow
def test_gpu_memory_tiny_runs_every_variant_and_prints_the_table(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    out = tmp_path / "table.md"
    run = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--steps", "2", "--warmup", "1", "--out", str(out)],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {}
    for line in run.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 8 and cells[0].startswith(("project", "official")):
            rows[cells[0]] = cells
    # every precision the CPU allows, for both loops, and each checkpointing choice for the project
    assert set(rows) == {"official no", "official bf16", "project defaults", "project no ckpt off",
                         "project no ckpt on", "project bf16 ckpt off", "project bf16 ckpt on"}
    for label, cells in rows.items():
        assert float(cells[1]) > 0, label  # a measured median, not "failed"
        if label.startswith("project"):
            # the ratio is of the unrounded seconds: it must lie within what the printed seconds (3 decimals, at
            # tens of milliseconds a few per cent) and its own 2 decimals allow
            ratio = float(cells[5])
            seconds = float(cells[1])
            official = float(rows["official bf16" if "bf16" in label else "official no"][1])
            low, high = (seconds - 5e-4) / (official + 5e-4), (seconds + 5e-4) / (official - 5e-4)
            assert low - 5e-3 <= ratio <= high + 5e-3, (label, ratio, seconds, official)
    assert re.search(r"### sd1 at 32 px, 4 pairs/step, rank 32 — CPU \(\d+ threads\), \d{4}-\d\d-\d\d", run.stdout)
    assert out.read_text().strip() == run.stdout.strip()


def test_unknown_family_is_refused():
    run = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--families", "sd9"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2 and "unknown family sd9; known: sd1" in run.stderr


def test_the_card_capped_run_is_added_on_cuda_only_and_only_picks_labels(monkeypatch):
    """--card-gb N adds one capped defaults run on a GPU (the CPU has no allocator cap); --only takes several labels."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_memory_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    capped = [v for v in module.project_variants("cuda", False, 12) if v.card_gb]
    assert [(v.label, v.card_gb) for v in capped] == [("project defaults, 12 GB card", 12)]
    assert capped[0].settings["mixed_precision"] == "auto" and capped[0].settings["gradient_checkpointing"] == "auto"
    assert not [v for v in module.project_variants("cpu", False, 12) if v.card_gb]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--families", "sdxl", "--card-gb", "12", "--only",
                          "no ckpt off,bf16 ckpt on", "--steps", "1", "--warmup", "1"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    labels = [line.split("|")[1].strip() for line in run.stdout.splitlines() if line.startswith("| project")]
    assert labels == ["project no ckpt off", "project bf16 ckpt on"]
