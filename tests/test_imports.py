"""Every module imports (commands import theirs lazily, so a broken import would otherwise show only when run)."""

import importlib
import pkgutil

import pytest

import mdiexit

MODULES = [m.name for m in pkgutil.walk_packages(mdiexit.__path__, "mdiexit.")]


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)
