"""The pilot's page: one self-contained HTML file (plots embedded as PNG) that a manager can read without the
tool. matplotlib is imported lazily (the plot extra)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

LABELS = {"local": "source alone", "fastest": "fastest device", "ddi-exit": "ddi-exit", "mdi-exit-fixed":
          "mdi-exit, fixed rate", "mdi-exit": "mdi-exit, adaptive"}
HIGHLIGHT, OTHER = "#1f77b4", "#b0b7c3"


def _bar_png(options: dict, key: str, title: str, unit: str) -> str | None:
    """A horizontal bar chart of one figure per option, as a data: URI; None when no option has it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in options if options[n].get(key) is not None]
    if not names:
        return None
    values = [options[n][key] for n in names]
    fig, ax = plt.subplots(figsize=(6.4, 0.55 * len(names) + 1.0), dpi=110)
    ax.barh([LABELS.get(n, n) for n in names], values,
            color=[HIGHLIGHT if n == "mdi-exit" else OTHER for n in names])
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:,.3g}" if v < 10 else f" {v:,.0f}", va="center", fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel(unit)
    ax.set_title(title, fontsize=11, loc="left")
    ax.set_xlim(0, max(values) * 1.2 or 1)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _row(cells: list[str], head: bool = False) -> str:
    tag = "th" if head else "td"
    return "<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>"


def _num(v, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def write_html(report: dict, path: Path) -> Path:
    o = report["options"]
    plots = [(_bar_png(o, "throughput_per_s", "Items per second at the accuracy target", "items/s"), "throughput"),
             (_bar_png(o, "joules_per_item", "Energy per item", "joules"), "energy"),
             (_bar_png(o, "bytes_per_item", "Network traffic per item", "bytes"), "traffic")]
    rows = [_row(["option", "items/s", "accuracy", "kB/item", "GB/hour", "J/item", "p50 ms", "p95 ms"], head=True)]
    for name, r in o.items():
        rows.append(_row([html.escape(LABELS.get(name, name)), _num(r["throughput_per_s"], ".1f"),
                          _num(r["accuracy"], ".3f"), _num(r["bytes_per_item"] / 1e3, ".2f"),
                          _num(r["bytes_per_item"] * r["throughput_per_s"] * 3600 / 1e9, ".2f"),
                          _num(r["joules_per_item"], ".3f"), _num(r["p50_ms"], ".0f"), _num(r["p95_ms"], ".0f")]))
    what = [_row(["what if", "planner's limit (items/s)", "change"], head=True)]
    for w in report["what_if"]:
        what.append(_row([html.escape(w["what"]), _num(w["limit_per_s"], ".0f"),
                          "–" if w["change"] is None else f"{w['change']:+.0%}"]))
    nodes = [_row(["node", "role", "slowdown", "uplink Mbit/s", "latency ms", "power"], head=True)]
    for n in report["site"]["nodes"]:
        nodes.append(_row([html.escape(n["name"]), n["role"], f"{n['slowdown']:g}", _num(n["bandwidth_mbps"], "g"),
                           f"{n['latency_ms']:g}", html.escape(str(n["power"] or "–"))]))
    images = "".join(f'<figure><img alt="{alt}" src="{uri}"></figure>' for uri, alt in plots if uri)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mdiexit pilot: {html.escape(report['site']['cluster'])}</title>
<style>
body {{ font: 15px/1.5 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}
h1 {{ font-size: 1.5rem; }} .verdict {{ font-size: 1.1rem; background: #eef4fb; padding: 1rem; border-radius: 6px; }}
table {{ border-collapse: collapse; margin: 1rem 0; }} td, th {{ padding: .3rem .8rem; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }} tr:nth-child(even) td {{ background: #f6f7f9; }}
figure {{ margin: 1rem 0; }} img {{ max-width: 100%; }} .small {{ color: #666; font-size: .9rem; }}
</style></head><body>
<h1>What mdi-exit gains on {html.escape(report['site']['cluster'])}</h1>
<p class="verdict" id="verdict">{html.escape(report['verdict'])}</p>
<p>Each option ran on this site for {report['seconds_per_option']:.0f} s at accuracy
{report['target_accuracy']:.3f}, with the admission rate adapted to what it sustains (the fixed-rate option at 90 %
of the planner's limit, {report['planner_limit_per_s']:.0f} items/s).</p>
{images}
<h2>Every figure</h2><table id="options">{''.join(rows)}</table>
<h2>What if</h2><p class="small">The planner's limit for mdi-exit at the same thresholds.</p>
<table id="what-if">{''.join(what)}</table>
<h2>The site</h2><table id="site">{''.join(nodes)}</table>
<p class="small">Energy: each node's power model (idle, busy and network joules), from the cluster file; a node
without one is left out. Written by <code>mdiexit pilot</code>; every figure is in report.json beside this page.</p>
</body></html>
"""
    path.write_text(page)
    return path
