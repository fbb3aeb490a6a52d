"""Every module imports (commands import theirs lazily, so a broken import would otherwise show only when run); no
module imports itself through others; the simulator runs without ZeroMQ."""

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import mdiexit

MODULES = [m.name for m in pkgutil.walk_packages(mdiexit.__path__, "mdiexit.")]


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)


def _imports_of(path: Path, package_modules: set[str]) -> set[str]:
    """The package's modules a file imports, at the top or inside functions (not under `if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", "") == "TYPE_CHECKING" for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found & package_modules


def test_no_module_imports_itself_through_others():
    src = Path(mdiexit.__file__).parent.parent
    files = {".".join(f.relative_to(src).with_suffix("").parts).removesuffix(".__init__"): f
             for f in (src / "mdiexit").rglob("*.py")}
    graph = {m: _imports_of(f, set(files)) - {m} for m, f in files.items()}
    state: dict[str, int] = {}

    def cycle_from(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n] if n in path else [m, n]
            if n not in state and (found := cycle_from(n, path + [n])):
                return found
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = cycle_from(m, [m])
            assert cycle is None, " -> ".join(cycle)


def test_the_simulator_loads_no_zeromq():
    code = "import sys, mdiexit.sim.run; print('zmq' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
