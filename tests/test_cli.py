import subprocess
import sys
from pathlib import Path

import pytest


def mdiexit(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "mdiexit.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_help_lists_commands():
    out = mdiexit("--help")
    assert out.returncode == 0
    for cmd in ("train", "export", "profile", "evaluate", "bench", "simulate"):
        assert cmd in out.stdout


def test_profile_prints_tasks_and_thresholds(tiny_package):
    out = mdiexit("profile", tiny_package)
    assert out.returncode == 0, out.stderr
    assert "exit profile on the validation split" in out.stdout and "default thresholds" in out.stdout


def test_bad_package_is_a_clear_error(tmp_path):
    out = mdiexit("profile", tmp_path)
    assert out.returncode == 2 and "manifest.json not found" in out.stderr and "Traceback" not in out.stderr


def test_missing_dataset_is_a_clear_error(tmp_path, tiny_package):
    out = mdiexit("evaluate", tiny_package, "--data-dir", tmp_path / "none")
    assert out.returncode == 2 and "dataset-fashion-mnist" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.training
def test_bench_engine_runs(tiny_package, tiny_checkpoint):
    out = mdiexit("bench", "engine", tiny_package, "--checkpoint", tiny_checkpoint, "--repeats", 3)
    assert out.returncode == 0, out.stderr
    assert "torch/ORT" in out.stdout and len([ln for ln in out.stdout.splitlines() if "x" in ln[-6:]]) == 8


def test_worker_import_path_loads_neither_torch_nor_tqdm():
    """A worker board has no torch (DESIGN §4), needs no progress bars and no simulator: `mdiexit worker` parses its
    command and imports the node runtime without loading any of them."""
    assert loaded_after("import mdiexit.cli, mdiexit.runtime.node, mdiexit.runtime.launch\n"
                        "a = mdiexit.cli.build_parser().parse_args(['worker', '--cluster', 'c.yaml', '--name', 'w1'])\n"
                        "assert a.func is mdiexit.cli.cmd_worker", ("torch", "tqdm", "simpy")) == []


def test_light_commands_do_not_load_the_runtime():
    assert loaded_after("import mdiexit.cli\nmdiexit.cli.build_parser().parse_args(['profile'])",
                        ("torch", "tqdm", "zmq", "simpy", "mdiexit.runtime", "mdiexit.sim")) == []


def loaded_after(code: str, prefixes: tuple[str, ...]) -> list[str]:
    """The modules in the packages `prefixes` that a fresh interpreter has loaded after running `code`."""
    probe = (f"import sys\n{code}\nprint(sorted(m for m in sys.modules if any(m == p or m.startswith(p + '.') "
             f"for p in {prefixes!r})))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return eval(out.stdout)


def test_bench_simulator_help_states_the_options_defaults():
    """The CLI passes None for an option not given, so SimBenchOptions holds each default; its help must agree."""
    from mdiexit.bench.simulator import SimBenchOptions

    out = mdiexit("bench", "simulator", "--help")
    assert out.returncode == 0, out.stderr
    o = SimBenchOptions()
    for value in (o.probe_s, o.adaptive_s, o.refine_steps):
        assert f"(default {value:g}" in " ".join(out.stdout.split())


@pytest.mark.parametrize("args, says", [
    (["run", "--rate", "-5"], "--rate: expected a number > 0"),
    (["run", "--duration", "0"], "--duration: expected a number of seconds > 0"),
    (["simulate", "--deadline-ms", "-1"], "--deadline-ms: expected a number of milliseconds > 0"),
    (["classify", "--cluster", "examples/edge4.yaml", "x.png"], "the source 'source' has no client_port"),
])
def test_a_meaningless_option_or_a_cluster_without_its_service_is_one_line_not_a_run(args, says, tmp_path):
    (tmp_path / "x.png").write_bytes(b"not an image")
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-m", "mdiexit.cli", *[str(root / a) if a.endswith(".yaml") else a
                                                                  for a in args]],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert "Traceback" not in out.stderr and len(lines) == 1 and lines[0].startswith("mdiexit: error: ")
    assert says in lines[0]
