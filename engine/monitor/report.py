"""The drift report as one self-contained HTML page: per model version, a table of the inputs'
quality counters and PSI, and a chart per input (and the score): the reference profile's share
per bin beside the recent window's, as inline SVG (no scripts, no external assets)."""

from __future__ import annotations

import html

from .tracker import PSI_ALERT, PSI_WARN

__all__ = ["drift_html"]

_REF, _NOW = "#8da0cb", "#fc8d62"
_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0 16px}td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:right}
td:first-child,th:first-child{text-align:left}.ok{color:#1a7f37}.warn{color:#b35900}.alert{color:#c62828;font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:18px}.chart{border:1px solid #e3e3e3;padding:8px;border-radius:6px}
.key span{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px}
"""


def drift_html(report: list[dict], title: str) -> str:
    """The page for `report` (engine.drift(model) / `scoreline log drift --json`)."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>",
             f"<p class='key'>PSI: &lt; {PSI_WARN} stable, {PSI_WARN}-{PSI_ALERT} moderate, "
             f"&gt; {PSI_ALERT} major shift.<span style='background:{_REF}'></span>reference"
             f"<span style='background:{_NOW}'></span>recent window</p>"]
    for version in report:
        parts.append(f"<h2>{_e(version['model'])} version {version['version']}: "
                     f"{version['window_rows']:,} rows in the window ({version['rows']:,} seen; "
                     f"reference: {version['reference_rows']:,} rows)</h2>")
        parts.append("<table><tr><th>input</th><th>PSI</th><th>missing</th><th>out of range</th>"
                     "<th>unseen category</th></tr>")
        for c in version["columns"]:
            parts.append(f"<tr><td>{_e(c['name'])}</td><td class='{_status(c['psi'])}'>"
                         f"{_num(c['psi'])}</td><td>{_int(c['missing'])}</td>"
                         f"<td>{_int(c['out_of_range'])}</td><td>{_int(c['unseen'])}</td></tr>")
        parts.append("</table><div class='charts'>")
        for c in version["columns"]:
            parts.append(f"<div class='chart'><b>{_e(c['name'])}</b> "
                         f"<span class='{_status(c['psi'])}'>PSI {_num(c['psi'])}</span><br>"
                         f"{_bars(c['labels'], c['reference'], c['recent'])}</div>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "".join(parts)


def _bars(labels: list[str], reference: list[float], recent: list[float]) -> str:
    """Grouped bars, reference and recent share per bin; the labels run below, turned 40 deg."""
    n = len(labels)
    bar, gap, height, top = 9, 6, 120, 8
    width = max(n * (2 * bar + gap) + 90, 200)  # room for the last, turned label
    peak = max([*reference, *recent, 0.01])
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height + 90}' "
           f"role='img'><line x1='34' y1='{top + height}' x2='{width}' y2='{top + height}' "
           "stroke='#999'/>",
           f"<text x='30' y='{top + 8}' font-size='10' text-anchor='end'>{peak:.0%}</text>",
           f"<text x='30' y='{top + height}' font-size='10' text-anchor='end'>0</text>"]
    for i, (label, ref, now) in enumerate(zip(labels, reference, recent)):
        x = 38 + i * (2 * bar + gap)
        for j, (share, colour) in enumerate(((ref, _REF), (now, _NOW))):
            h = height * share / peak
            out.append(f"<rect x='{x + j * bar}' y='{top + height - h:.1f}' width='{bar - 1}' "
                       f"height='{h:.1f}' fill='{colour}'><title>{_e(label)}: {share:.1%}"
                       "</title></rect>")
        ty = top + height + 10
        out.append(f"<text x='{x + bar}' y='{ty}' font-size='9' transform='rotate(40 {x + bar} "
                   f"{ty})'>{_e(label[:16])}</text>")
    out.append("</svg>")
    return "".join(out)


def _status(psi) -> str:
    if psi is None:
        return ""
    return "alert" if psi > PSI_ALERT else "warn" if psi > PSI_WARN else "ok"


def _num(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _int(value) -> str:
    return "" if value is None else f"{value:,}"


def _e(text) -> str:
    return html.escape(str(text), quote=True)
