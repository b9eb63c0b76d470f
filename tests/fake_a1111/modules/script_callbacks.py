"""modules/script_callbacks.py, reduced to the ui_tabs callbacks (same names and signatures)."""
from __future__ import annotations

import dataclasses
import inspect
import os
import traceback

errors: list[str] = []  # modules.errors.report prints and goes on; kept here so tests can see them


@dataclasses.dataclass
class ScriptCallback:
    script: str
    callback: object
    name: str = None


def add_callback(callbacks, fun, *, name=None, category='unknown'):
    stack = [x for x in inspect.stack() if x.filename != __file__]
    filename = stack[0].filename if stack else 'unknown file'
    callback_name = f"base/{os.path.basename(filename)}/{category}" + (f"/{name}" if name is not None else "")
    callbacks.append(ScriptCallback(filename, fun, callback_name))


callback_map = dict(callbacks_app_started=[], callbacks_model_loaded=[], callbacks_ui_tabs=[],
                    callbacks_ui_settings=[], callbacks_script_unloaded=[])


def ui_tabs_callback():
    res = []
    for c in callback_map['callbacks_ui_tabs']:
        try:
            res += c.callback() or []
        except Exception:
            errors.append(traceback.format_exc())
    return res


def on_ui_tabs(callback, *, name=None):
    """register a function to be called when the UI is creating new tabs; it returns a list of
    (gradio_component, title, elem_id)"""
    add_callback(callback_map['callbacks_ui_tabs'], callback, name=name, category='ui_tabs')


def on_app_started(callback, *, name=None):
    add_callback(callback_map['callbacks_app_started'], callback, name=name, category='app_started')
