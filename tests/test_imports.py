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


def test_the_runtime_and_simulator_shells_hold_at_most_two_locks():
    """Decisions live in cores owned by one thread each (runtime.loop): a lock in a shell is a decision that
    escaped its core. Counted as constructions of Lock, RLock or Condition however they are imported."""
    root = Path(mdiexit.__file__).parent
    found = []
    for path in sorted([*(root / "runtime").rglob("*.py"), *(root / "sim").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", getattr(node.func, "id", ""))
                if name in ("Lock", "RLock", "Condition"):
                    found.append(f"{path.relative_to(root)}:{node.lineno}")
            elif isinstance(node, ast.keyword) and node.arg == "default_factory" \
                    and getattr(node.value, "attr", getattr(node.value, "id", "")) in ("Lock", "RLock", "Condition"):
                found.append(f"{path.relative_to(root)}:{node.lineno}")
    assert len(found) <= 2, found
