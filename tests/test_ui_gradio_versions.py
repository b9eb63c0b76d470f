"""The tab under each gradio a host pins: 3.41.2 (A1111), 4.40.0 (Forge) and the one installed here (standalone).

Under the host versions it runs in its own virtual environment (tests/ui_gradio_envs.py; no torch there): the
tab is built through the A1111 shim's loader, served on 127.0.0.1, its config read back and three events called
over HTTP; then headless Chromium opens it and checks that a bad output name shows its message.

The host environments take a few minutes and PyPI to make, so those cases are opt-in: they run when the
environments exist (made by `python tests/ui_gradio_envs.py create`), or when DUO_UI_GRADIO_ENVS=create asks this
test to make them; otherwise they are skipped with that instruction. The current gradio always runs.
"""
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ui_gradio_envs as envs  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(os.environ.get("DUO_UI_ARTIFACTS", Path(__file__).resolve().parent / "artifacts" / "ui"))


def _python(version):
    if version == "current":
        return sys.executable
    if not envs.ready(version):
        if os.environ.get("DUO_UI_GRADIO_ENVS") == "create":
            envs.create(version)
        else:
            pytest.skip(f"no gradio {version} environment: run `python tests/ui_gradio_envs.py create` "
                        "or set DUO_UI_GRADIO_ENVS=create")
    return str(envs.env_python(version))


VERSIONS = ["current", *envs.VERSIONS]


@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
def test_tab_builds_serves_and_answers(version):
    python = _python(version)
    result = envs.check(version, python=python)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    if version != "current":
        assert report["gradio"] == version
        assert not report["torch_importable"], "the host environment should hold gradio only"
    assert report["ok"] and report["missing_components"] == []


@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
def test_tab_renders_in_chromium(version):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    python = _python(version)
    proc, url = envs.serve(version, python=python)
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(url)
                sync_api.expect(page.locator("#duo_run")).to_be_visible(timeout=60_000)
                box = page.locator("#duo_out_name textarea, #duo_out_name input").first
                box.fill("../x")
                box.blur()
                page.locator("#duo_run").click()
                sync_api.expect(page.locator("#duo_notice").first).to_contain_text("points into another folder",
                                                                             timeout=30_000)
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / f"gradio-{version}-bad-name.png"), full_page=True)
                # live progress, a second click and Cancel, with a torch-free stand-in for the training
                box.fill("duo_fake_run")
                box.blur()
                page.locator("#duo_run").click()
                sync_api.expect(page.locator("#duo_status").first).to_contain_text("training", timeout=30_000)
                page.locator("#duo_run").click()
                sync_api.expect(page.locator("#duo_notice").first).to_contain_text("already running",
                                                                                   timeout=30_000)
                sync_api.expect(page.locator("#duo_status").first).to_contain_text("ETA", timeout=30_000)
                page.screenshot(path=str(ARTIFACTS / f"gradio-{version}-running.png"), full_page=True)
                page.locator("#duo_cancel").click()
                sync_api.expect(page.locator("#duo_status").first).to_contain_text("Cancelled", timeout=30_000)
                tab = page.get_by_role("tab", name="Compare adapters")  # gradio 4+; gradio 3 has plain buttons
                if tab.count() == 0:
                    tab = page.locator("button:visible", has_text="Compare adapters")
                tab.first.click()
                sync_api.expect(page.locator("#duo_adapters").first).to_contain_text("duo_fake", timeout=30_000)
                page.screenshot(path=str(ARTIFACTS / f"gradio-{version}-compare.png"), full_page=True)
            finally:
                browser.close()
    finally:
        proc.stdin.close()
        try:
            proc.wait(30)
        except Exception:
            proc.kill()
            proc.wait(10)
