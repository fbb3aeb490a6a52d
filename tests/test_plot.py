from pathlib import Path

import pytest

from mdiexit.plot import PlotError, plot_timeline

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_timeline(run_dir: Path, target: bool) -> None:
    header = "t_s,rate,operating_point,thresholds,max_backlog_s,throughput_per_s,accuracy"
    rows = [header + (",target_backlog_s" if target else "")]
    for i in range(20):
        row = f"{i * 0.5},{10 + i},{i % 3},0.9 0.8 0.0,{0.1 * (i % 5)},{9 + i},{0.8 + 0.005 * (i % 4)}"
        rows.append(row + (",0.3" if target else ""))
    rows.append("10.0,30,2,0.9 0.8 0.0,0.2,,")  # an empty cell is drawn as a gap, not an error
    if target:
        rows[-1] += ",0.3"
    (run_dir / "timeline.csv").write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("target", [False, True])
def test_plot_timeline_writes_a_png(tmp_path, target):
    write_timeline(tmp_path, target)
    out = plot_timeline(tmp_path)
    assert out == tmp_path / "timeline.png"
    assert out.read_bytes()[:8] == PNG_SIGNATURE


def test_plot_timeline_missing_csv(tmp_path):
    with pytest.raises(PlotError, match="timeline.csv"):
        plot_timeline(tmp_path)


def test_plot_timeline_missing_column(tmp_path):
    (tmp_path / "timeline.csv").write_text("t_s,rate\n0,1\n")
    with pytest.raises(ValueError, match="operating_point"):
        plot_timeline(tmp_path)
