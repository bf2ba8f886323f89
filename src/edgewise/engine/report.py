"""The run report: report.json (every candidate with its parameters, metrics, status and lineage, and the rule that
picked the best) and report.html, a page with the size / quality trade-off plotted, and speed against size when a
latency evaluator ran (Pareto front ringed, best starred), the selection and a table."""
from __future__ import annotations

import dataclasses
import html
import json
import time
from pathlib import Path

W, H, PAD = 640, 420, 56
COLORS = {"ok": "#2563eb", "pruned": "#9ca3af"}


def build(runner, winner) -> dict:
    from edgewise.engine.selection import rule

    return {
        "workflow": runner.wf.label, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "objectives": runner.metrics, "goals": [dataclasses.asdict(g) for g in runner.settings.goals],
        "rule": rule(runner.objectives), "selection": runner.selection,
        "reference": runner.reference, "best": winner.trial if winner else None,
        "candidates": [dataclasses.asdict(c) for c in runner.candidates],
    }


def write(out: Path, report: dict) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "report.html").write_text(page(report))


def charts(report: dict) -> list[tuple[str, str, str | None]]:
    """(x, y, dot size) per chart: size against the first other objective (quality), dots sized by decode speed;
    and, when a latency evaluator ran, decode speed against size."""
    measured = list(dict.fromkeys(m for c in report["candidates"] for m in c["metrics"]))
    x = "size_mb" if "size_mb" in measured else (report["objectives"][:1] or [None])[0]
    speed = "decode_tok_s" if "decode_tok_s" in measured else None
    others = [m for m in report["objectives"] + measured if m not in (x, "decode_tok_s", "scored_tokens", "answers")]
    found = [(x, others[0], speed)] if others else []
    if speed and x != speed:
        found.append((x, speed, None))
    return found


def plot(report: dict, x: str, y: str, speed: str | None) -> str:
    points = [c for c in report["candidates"] if x in c["metrics"] and y in c["metrics"]]
    if not points:
        return "<p>No candidate has both metrics to plot.</p>"
    xs, ys = [c["metrics"][x] for c in points], [c["metrics"][y] for c in points]
    sx, sy = _scale(xs, PAD, W - PAD), _scale(ys, H - PAD, PAD)
    speeds = [c["metrics"].get(speed, 0) for c in points] if speed else []
    parts = [f'<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img">',
             f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#333"/>',
             f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" stroke="#333"/>',
             f'<text x="{W / 2}" y="{H - 14}" text-anchor="middle">{x}</text>',
             f'<text x="16" y="{H / 2}" transform="rotate(-90 16 {H / 2})" text-anchor="middle">{y}</text>']
    for value, pos in ((min(xs), sx(min(xs))), (max(xs), sx(max(xs)))):
        parts.append(f'<text x="{pos}" y="{H - PAD + 16}" text-anchor="middle" font-size="11">{value:.4g}</text>')
    for value, pos in ((min(ys), sy(min(ys))), (max(ys), sy(max(ys)))):
        parts.append(f'<text x="{PAD - 6}" y="{pos}" text-anchor="end" font-size="11">{value:.4g}</text>')
    front = sorted((c for c in points if c["pareto"]), key=lambda c: c["metrics"][x])
    if len(front) > 1:
        line = " ".join(f"{sx(c['metrics'][x])},{sy(c['metrics'][y])}" for c in front)
        parts.append(f'<polyline points="{line}" fill="none" stroke="#dc2626" stroke-dasharray="4 3"/>')
    for c in points:
        r = 5 + (8 * (c["metrics"].get(speed, 0) - min(speeds)) / ((max(speeds) - min(speeds)) or 1) if speed else 0)
        cx, cy = sx(c["metrics"][x]), sy(c["metrics"][y])
        ring = ' stroke="#dc2626" stroke-width="3"' if c["pareto"] else ""
        tip = html.escape(f"trial {c['trial']}: {json.dumps(c['params'])} {json.dumps(c['metrics'])}")
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{r:.1f}" fill="{COLORS.get(c["status"], "#000")}"'
                     f' fill-opacity="0.8"{ring}><title>{tip}</title></circle>')
        if c["trial"] == report["best"]:
            parts.append(f'<text x="{cx:.1f}" y="{cy - r - 4:.1f}" text-anchor="middle" font-size="16">★</text>')
    legend = "blue: kept; grey: pruned by a goal; red ring: Pareto front; ★ best" + (
        f"; dot size: {speed}" if speed else "")
    return "\n".join(parts) + f"</svg><p class=note>{legend}</p>"


def _scale(values, lo, hi):
    a, b = min(values), max(values)
    return lambda v: (lo + hi) / 2 if a == b else lo + (v - a) * (hi - lo) / (b - a)


def table(report: dict) -> str:
    metrics = list(dict.fromkeys(m for c in report["candidates"] for m in c["metrics"]))
    params = list(dict.fromkeys(p for c in report["candidates"] for p in c["params"]))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["trial", *params, "status", *metrics, "note"])
    rows = []
    for c in report["candidates"]:
        cells = [str(c["trial"]) + (" ★" if c["trial"] == report["best"] else "") + (" ◆" if c["pareto"] else ""),
                 *[str(c["params"].get(p, "")) for p in params], c["status"],
                 *[f"{c['metrics'][m]:.4g}" if m in c["metrics"] else "" for m in metrics], c["reason"]]
        rows.append("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in cells) + "</tr>")
    if report["reference"]:
        ref = ["input model", *[""] * len(params), "reference",
               *[f"{report['reference'][m]:.4g}" if m in report["reference"] else "" for m in metrics], ""]
        rows.insert(0, "<tr class=ref>" + "".join(f"<td>{html.escape(v)}</td>" for v in ref) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def page(report: dict) -> str:
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>edgewise search report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#111}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ddd;padding:4px 8px;text-align:right}}tr.ref{{background:#f3f4f6}}.note{{color:#555}}</style>
</head><body><h1>edgewise search report</h1>
<p>workflow {html.escape(report['workflow'])} · {report['created']} · objectives: {html.escape(', '.join(report['objectives']))}
· {len(report['candidates'])} candidates · best: trial {report['best']}</p>
{''.join(plot(report, *chart) for chart in charts(report)) or "<p>Nothing measured to plot.</p>"}
<h2>Selection</h2><p>Rule: {html.escape(report['rule'])}.</p>
<ul>{''.join(f"<li>{html.escape(line)}</li>" for line in report['selection'])}</ul>
<h2>Candidates</h2>{table(report)}
<p class=note>★ best · ◆ on the Pareto front · lineage and full metrics in report.json</p></body></html>"""
