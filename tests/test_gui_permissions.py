"""The tab with a LoRA folder, subfolder or adapter file that this user cannot read (chmod 000): the Refresh and
Compare handlers give one line saying what cannot be read and why, never a traceback, never "empty" or "damaged".

CI runs as root, where chmod 000 stops nothing, so `deny` makes the paths behave as they do for another user; the
last test uses a real chmod and runs only for a non-root user."""
import builtins
import errno
import json
import os
from pathlib import Path

import pytest

from duo_unlearn.extension.backends import StandaloneBackend
from duo_unlearn.extension.tab import NONE, TabController, build_tab
from duo_unlearn.trainer.errors import UserError


def deny(monkeypatch, *paths):
    """chmod 000 on `paths` as a non-root user sees it: the entry itself can be stat'ed, but it cannot be listed
    or opened, and nothing under it can be reached."""
    denied = {os.path.abspath(p) for p in paths}
    real = {"stat": os.stat, "lstat": os.lstat, "scandir": os.scandir, "open": builtins.open}

    def check(path, itself: bool):
        if isinstance(path, int) or path is None:
            return
        path = os.path.abspath(os.fsdecode(os.fspath(path)))
        if (itself and path in denied) or any(str(parent) in denied for parent in Path(path).parents):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    def stat(path, *args, **kwargs):
        check(path, False)
        return real["stat"](path, *args, **kwargs)

    def lstat(path, *args, **kwargs):
        check(path, False)
        return real["lstat"](path, *args, **kwargs)

    def scandir(path="."):
        check(path, True)
        return real["scandir"](path)

    def open_(file, *args, **kwargs):
        check(file, True)
        return real["open"](file, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(os, "lstat", lstat)
    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(builtins, "open", open_)


def fake_adapter(path: Path, concept: str = "red") -> Path:
    """A DUO adapter as the listing sees it: the safetensors header with duo.* metadata, no tensor."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"duo.concept": json.dumps(concept), "duo.beta": "500", "duo.family": json.dumps("sd1"),
            "ss_network_dim": "4"}
    header = json.dumps({"__metadata__": meta}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    return path


def handlers(backend):
    """The tab's Refresh and Compare click handlers, as gradio calls them."""
    import gradio as gr

    with gr.Blocks() as demo:
        build_tab(backend)
    fns = demo.fns.values() if isinstance(demo.fns, dict) else demo.fns
    by_name = {getattr(f, "api_name", None): f.fn for f in fns}
    return by_name["duo_refresh"], by_name["duo_compare"]


MODEL = "/nonexistent/model"  # every refusal here comes before a model is looked at


def compare_args(name):
    return (MODEL, "a red square", "", 0, 2, 5.0, name, 1.0, NONE, 1.0, NONE, 1.0, NONE, 1.0)


def one_line(text: str, *parts: str) -> None:
    text = text.strip()
    assert "\n" not in text and "Traceback" not in text, text
    for part in parts:
        assert part in text, (part, text)


@pytest.mark.parametrize("work_dir", ["inside", "elsewhere"])
def test_an_unreadable_lora_folder_is_said_to_be_unreadable(tmp_path, monkeypatch, work_dir):
    lora = tmp_path / "Lora"
    fake_adapter(lora / "ok.safetensors")
    (lora / ".duo-unlearn").mkdir()
    backend = StandaloneBackend(lora, model=MODEL,
                                work_dir=None if work_dir == "inside" else tmp_path / "work")
    refresh, compare = handlers(backend)
    ctl = TabController(backend)
    assert ctl.adapter_names() == [NONE, "ok"]
    deny(monkeypatch, lora)

    table, _family, *dropdowns = refresh(MODEL)  # before: PermissionError (work dir inside) or "No DUO adapter"
    one_line(table, f"The LoRA folder {lora} cannot be read (permission denied)")
    assert "No DUO adapter" not in table and dropdowns[0]["choices"] in ([NONE], [(NONE, NONE)])
    assert ctl.adapter_names() == [NONE]
    one_line(ctl.adapter_table(), f"{lora} cannot be read (permission denied)")
    handlers(backend)  # the tab builds too (it fills the table when it is built)

    with pytest.raises(UserError) as caught:  # before: "adapter 'ok' is not in … (press Refresh)"
        ctl.compare(*compare_args("ok"))
    one_line(str(caught.value), f"The LoRA folder {lora} cannot be read (permission denied)")
    base, adapted, note = compare(*compare_args("ok"))
    assert base is None and adapted is None
    one_line(note, "cannot be read (permission denied)", str(lora))


def test_an_unreadable_adapter_is_named_in_the_table_and_compare_says_permission_denied(tmp_path, monkeypatch):
    lora = tmp_path / "Lora"
    fake_adapter(lora / "red.safetensors")
    locked = fake_adapter(lora / "ok.safetensors", "blue")
    backend = StandaloneBackend(lora, model=MODEL)
    refresh, compare = handlers(backend)
    ctl = TabController(backend)
    assert ctl.adapter_names() == [NONE, "ok", "red"] or ctl.adapter_names() == [NONE, "red", "ok"]
    locked.chmod(0o400)  # a chmod after the last listing (a new ctime, the same mtime): the cache must not hide it
    deny(monkeypatch, locked)

    table, _family, *dropdowns = refresh(MODEL)
    assert "| red | red | 500" in table and "| ok |" not in table  # still listed: the readable one
    note = table.strip().splitlines()[-1]  # before: no word about ok.safetensors
    one_line(note, "cannot be read", str(locked), "permission denied")
    assert ctl.adapter_names() == [NONE, "red"]

    with pytest.raises(UserError) as caught:  # before: "cannot be read as a DUO adapter (damaged, …)"
        ctl.compare(*compare_args("ok"))
    one_line(str(caught.value), f"{locked} cannot be read (permission denied)")
    assert "damaged" not in str(caught.value)
    _, _, shown = compare(*compare_args("ok"))
    one_line(shown, "ok.safetensors cannot be read (permission denied)")


def test_only_unreadable_files_is_not_called_empty(tmp_path, monkeypatch):
    lora = tmp_path / "Lora"
    locked = fake_adapter(lora / "ok.safetensors")
    sub = lora / "styles"
    fake_adapter(sub / "blue.safetensors", "blue")
    ctl = TabController(StandaloneBackend(lora, model=MODEL))
    deny(monkeypatch, locked, sub)

    table = ctl.adapter_table()  # before: "No DUO adapter in … yet"
    assert "yet" not in table and "No readable DUO adapter" in table
    one_line(table.strip().splitlines()[-1], f"`{locked}`", f"`{sub}`/", "permission denied")
    with pytest.raises(UserError) as caught:  # before: "'blue' is not in … (press Refresh)"
        ctl.compare(*compare_args("blue"))
    one_line(str(caught.value), f"or it is in {sub}, which cannot be read (permission denied)")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads a chmod 000 folder")
def test_real_chmod_000(tmp_path):
    lora = tmp_path / "Lora"
    locked = fake_adapter(lora / "ok.safetensors")
    fake_adapter(lora / "red.safetensors")
    backend = StandaloneBackend(lora, model=MODEL)
    refresh, _ = handlers(backend)
    ctl = TabController(backend)
    try:
        locked.chmod(0)
        one_line(ctl.adapter_table().strip().splitlines()[-1], str(locked), "permission denied")
        with pytest.raises(UserError, match="ok.safetensors cannot be read .permission denied."):
            ctl.compare(*compare_args("ok"))
        lora.chmod(0)
        one_line(refresh(MODEL)[0], f"The LoRA folder {lora} cannot be read (permission denied)")
        with pytest.raises(UserError, match="cannot be read .permission denied."):
            ctl.compare(*compare_args("red"))
    finally:
        lora.chmod(0o755)
        locked.chmod(0o644)
