"""AUTOMATIC1111 / Forge entry point: adds the "DUO Unlearn" tab.

The web UI executes every scripts/*.py file of an extension. Module names are global there, so this file loads the
extension's root folder as the package `duo_unlearn` (all imports inside it are relative) and imports nothing
heavy until the tab is built.
"""
import importlib.util
import os
import sys

EXTENSION_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "duo_unlearn"


def load_package():
    """This extension's root as `duo_unlearn`, even when another copy is pip-installed under that name."""
    module = sys.modules.get(PACKAGE)
    if module is not None and os.path.normcase(os.path.dirname(os.path.abspath(module.__file__ or ""))) == \
            os.path.normcase(EXTENSION_ROOT):
        return module
    for key in [k for k in sys.modules if k == PACKAGE or k.startswith(PACKAGE + ".")]:
        del sys.modules[key]  # another copy: ours must win inside this web UI
    spec = importlib.util.spec_from_file_location(PACKAGE, os.path.join(EXTENSION_ROOT, "__init__.py"),
                                                  submodule_search_locations=[EXTENSION_ROOT])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[PACKAGE]
        raise
    return module


def on_ui_tabs():
    load_package()
    from duo_unlearn.extension.backends import A1111Backend
    from duo_unlearn.extension.tab import create_blocks

    blocks = create_blocks(A1111Backend())
    return [(blocks, "DUO Unlearn", "duo_unlearn")]


try:
    from modules import script_callbacks
except ImportError:  # imported outside a web UI (e.g. by a test collecting files): nothing to register
    script_callbacks = None

if script_callbacks is not None:
    script_callbacks.on_ui_tabs(on_ui_tabs)
