"""`mdiexit rollout` refuses what it cannot do in one line, before reaching any source (ops/rollout.py)."""

from __future__ import annotations

from mdiexit.cli.main import main
from tests.runtime.conftest import write_cluster


def test_a_bad_package_bad_flags_or_no_running_run_each_get_one_line(tmp_path, tiny_package, capsys, monkeypatch):
    monkeypatch.setenv("MDIEXIT_RUNTIME_DIR", str(tmp_path / "run"))
    cluster = str(write_cluster(tmp_path / "c.yaml", tiny_package, [10, 10]))
    cases = [
        (["--package", str(tmp_path / "nowhere")], "manifest.json not found"),
        (["--package", str(tiny_package), "--steps", "0.5"], "--steps: shares in (0, 1], the last 1"),
        (["--package", str(tiny_package), "--min-agreement", "1.5"], "--min-agreement: a share in [0, 1]"),
        (["--package", str(tiny_package)], "no running one-machine run of source 'source'"),
    ]
    for args, said in cases:
        assert main(["rollout", "--cluster", cluster, *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("mdiexit: error:") and said in err and "\n" not in err
