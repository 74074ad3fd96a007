"""The compiled build (setup.py, ``WEBHOOKBUS_COMPILE=1``) is what runs when it says it is.

``make test`` runs the whole suite a second time on ``.venv-compiled`` with
``WEBHOOKBUS_EXPECT_COMPILED=1``.  Compiled or not, a module is the same file to Python, so
without these checks a run that silently imported the source tree (this directory on
``sys.path``) would pass and prove nothing about the C extensions.
"""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def compiled_modules() -> list[str]:
    """setup.py's ``COMPILED``, as module names (setup.py runs setup() when imported: read it)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    paths = next(ast.literal_eval(node.value) for node in tree.body
                 if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "COMPILED")
    return [path.removesuffix(".py").replace("/", ".") for path in paths]


def is_extension(module: str) -> bool:
    return importlib.import_module(module).__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def test_every_module_setup_py_compiles_exists():
    modules = compiled_modules()
    assert modules and all((ROOT / (m.replace(".", "/") + ".py")).is_file() for m in modules), modules


expect_compiled = pytest.mark.skipif(os.environ.get("WEBHOOKBUS_EXPECT_COMPILED") != "1",
                                     reason="the suite runs on the source here (make test-compiled: the compiled build)")


@expect_compiled
def test_this_run_imports_the_compiled_modules():
    assert [m for m in compiled_modules() if not is_extension(m)] == []


@expect_compiled
def test_a_listener_started_from_the_project_directory_imports_them_too():
    """The tests start listeners with ``python -m webhookbus.cli`` (some from this directory):
    ``PYTHONSAFEPATH`` must keep ./webhookbus from shadowing the installed build there."""
    probe = ("import importlib, importlib.machinery as m, sys; print(all(importlib.import_module(n).__file__"
             ".endswith(tuple(m.EXTENSION_SUFFIXES)) for n in sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", probe, *compiled_modules()], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == "True"
