"""Turns a results dict into results.json, results.md (tables with ratios to the best peer) and PNG plots.

Ratios are pair by pair: within each round Scoreline's figure is divided by the peer's, and the
median over rounds is shown. "Best peer" is the fastest peer whose results are exact (agree with
LightGBM in float64); ONNX Runtime computes in float32, so it is shown with its difference but
never counts as the best peer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks.suite.kernels import pairwise_ratio
from benchmarks.suite.peers import ENGINES, OURS

__all__ = ["write_all", "markdown", "targets", "best_peer_ratios", "tier_reason"]


def write_all(results: dict, out: Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=_jsonable) + "\n")
    plots = _plots(results, out)
    results.setdefault("plots", plots)
    (out / "results.md").write_text(markdown(results, plots))


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


# ----------------------------------------------------------------------------- ratios and targets

def _exact_engines(kernels: dict, model: str) -> set[str]:
    return {a["engine"] for a in kernels["agreement"] if a["model"] == model and a["status"] == "exact"}


def best_peer_ratios(kernels: dict) -> dict:
    """Per (model, batch) latency and (model, rows, threads) throughput: the best exact peer and the
    pairwise ratio of Scoreline to it (latency: Scoreline / peer, lower is better; throughput:
    Scoreline / peer, higher is better), plus the ratio to LightGBM."""
    out = {"latency": [], "throughput": []}
    for kind, key, figure, series in (
        ("latency", ("model", "batch", "threads"), "median_us", "round_medians_us"),
        ("throughput", ("model", "rows", "threads"), "rows_per_s", "round_rows_per_s"),
    ):
        groups: dict[tuple, dict] = {}
        for row in kernels[kind]:
            groups.setdefault(tuple(row[k] for k in key), {})[row["engine"]] = row
        for group, by_engine in groups.items():
            # Scoreline's figure is its default path ("scoreline": the tier chosen at load) when it
            # ran, else its best pinned tier; no Scoreline tier is ever a peer.
            tiers = [by_engine[name] for name in OURS if name in by_engine]
            if not tiers:
                continue
            ours = by_engine.get("scoreline") or (min if kind == "latency" else max)(tiers, key=lambda r: r[figure])
            exact = _exact_engines(kernels, group[0]) - set(OURS)
            peers = [r for name, r in by_engine.items() if name in exact]
            entry = dict(zip(key, group))
            entry["scoreline"] = ours[figure]
            entry["tier"] = ours["engine"]
            if peers:
                pick = min if kind == "latency" else max
                best = pick(peers, key=lambda r: r[figure])
                entry["best_peer"] = best["engine"]
                entry["best_peer_figure"] = best[figure]
                entry["ratio_to_best"] = pairwise_ratio(ours[series], best[series])
            if "lightgbm" in by_engine:
                entry["ratio_to_lightgbm"] = pairwise_ratio(ours[series], by_engine["lightgbm"][series])
            out[kind].append(entry)
    return out


def targets(results: dict) -> list[dict]:
    """The issue's four targets, each reached / missed / not measured, with the figure."""
    rows = []
    kernels = results.get("kernels") or {"latency": [], "throughput": [], "agreement": []}
    ratios = best_peer_ratios(kernels)
    if not ratios["throughput"]:
        rows.append(_target("Bulk kernel throughput targets", None, None, "no kernel throughput was measured"))
    else:
        largest = {}
        for e in ratios["throughput"]:
            largest[e["model"]] = max(largest.get(e["model"], 0), e["rows"])
        bulk = [e for e in ratios["throughput"] if e["rows"] == largest[e["model"]]]
        vs_best = [e for e in bulk if "ratio_to_best" in e]
        worst = min(vs_best, key=lambda e: e["ratio_to_best"]) if vs_best else None
        rows.append(_target(
            "Bulk kernel throughput >= the best exact peer at equal threads on every model",
            None if worst is None else worst["ratio_to_best"] >= 1.0,
            None if worst is None else (
                f"worst {worst['ratio_to_best']:.2f}x {worst['best_peer']} ({worst['model']}, "
                f"{worst['rows']:,} rows, {worst['threads']} thread(s))"),
        ))
        vs_lgb = [e for e in bulk if "ratio_to_lightgbm" in e]
        worst = min(vs_lgb, key=lambda e: e["ratio_to_lightgbm"]) if vs_lgb else None
        best = max(vs_lgb, key=lambda e: e["ratio_to_lightgbm"]) if vs_lgb else None
        rows.append(_target(
            "Bulk kernel throughput >= 10x LightGBM",
            None if worst is None else worst["ratio_to_lightgbm"] >= 10.0,
            None if worst is None else (
                f"{worst['ratio_to_lightgbm']:.2f}x ({worst['model']}, {worst['threads']} thread(s)) to "
                f"{best['ratio_to_lightgbm']:.2f}x ({best['model']}, {best['threads']} thread(s))"),
        ))
    single = [e for e in ratios["latency"] if e["batch"] == 1 and "ratio_to_best" in e]
    worst = max(single, key=lambda e: e["ratio_to_best"]) if single else None
    rows.append(_target(
        "Single-row in-process latency <= 1.5x the best exact peer",
        None if worst is None else worst["ratio_to_best"] <= 1.5,
        None if worst is None else (
            f"worst {worst['ratio_to_best']:.2f}x {worst['best_peer']} ({worst['model']}: "
            f"{worst['scoreline']:.1f} us vs {worst['best_peer_figure']:.1f} us)"),
        None if worst else "no single-row latency was measured against an exact peer",
    ))
    for section in ("http", "bulk"):
        data = results.get(section) or {}
        if data.get("targets"):
            rows.extend(data["targets"])
        else:
            rows.append(_target(f"{section} targets", None, None,
                                data.get("status") or f"the {section} section did not run"))
    return rows


def _target(name: str, reached, figure, why: str | None = None) -> dict:
    return {"target": name, "reached": reached, "figure": figure,
            **({"why": why} if why else {})}


# ----------------------------------------------------------------------------- Markdown

def _fmt(x, digits=3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        if x == 0:
            return "0"
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        if abs(x) < 1e-3:
            return f"{x:.1e}"
        return f"{x:.{digits}g}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def _table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _dict_table(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)\n"
    headers = list(dict.fromkeys(k for row in rows for k in row))
    return _table(headers, [[row.get(h) for h in headers] for row in rows])


def markdown(results: dict, plots: list[str] | None = None) -> str:
    meta = results["meta"]
    m = meta["machine"]
    parts = [
        "# Scoreline benchmark results\n",
        f"- Command: `{meta['command']}` ({'quick' if meta['quick'] else 'full'} run"
        f"{'' if meta['timing'] else ', TIMING OFF: figures are not measurements'})",
        f"- Started: {meta['started']}, wall time {meta.get('wall_s', '?')} s",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['platform']}; "
        f"load average at start {m['load_avg_at_start']}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v),
        f"- Medians over {meta['rounds']} interleaved rounds; ratios are pair by pair within a round.\n",
    ]
    parts.append("## Targets\n")
    parts.append(_table(["target", "reached", "figure"], [
        [t["target"], {True: "yes", False: "NO", None: "not measured"}[t["reached"]],
         t["figure"] or t.get("why") or "-"] for t in results.get("targets", [])]))
    if results.get("skipped"):
        parts.append("\n## Skipped (not run, and why)\n")
        parts += [f"- {line}" for line in results["skipped"]]
        parts.append("")
    kernels = results.get("kernels")
    if kernels:
        parts.append(_kernels_md(kernels))
    for section in ("pipeline", "http", "bulk", "scaling"):
        data = results.get(section)
        if not data:
            continue
        parts.append(f"\n## {section.capitalize()}\n")
        for note in data.get("notes", []):
            parts.append(f"- {note}")
        if data.get("notes"):
            parts.append("")
        for title, rows in data.get("tables", {}).items():
            parts.append(f"\n### {title}\n")
            parts.append(_dict_table(rows))
    if plots:
        parts.append("\n## Plots\n")
        parts += [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(parts) + "\n"


def _kernels_md(k: dict) -> str:
    engines = [e for e in ENGINES if any(r["engine"] == e for r in k["agreement"])]
    out = ["\n## Kernels\n", "### Models\n", _dict_table(k["models"])]
    out.append("\n### Agreement with LightGBM (checked before timing; DISAGREES = not timed)\n")
    out.append(_table(["model", "engine", "status", "max abs diff", "max rel diff", "rows"], [
        [a["model"], a["engine"], a["status"], a["max_abs"], a["max_rel"], a["rows"]] for a in k["agreement"]]))
    out.append("\n### Load / compile time, seconds (cold, warm)\n")
    out.append(_table(["model", "engine", "cold s", "warm s", "what"], [
        [r["model"], r["engine"], r.get("cold_s"), r.get("warm_s"), r.get("what", "")] for r in k["load"]]))
    chosen = [r for r in k["load"] if r.get("tiers")]
    if chosen:
        out.append("\n### Kernel tier chosen at load (default path), per batch size\n")
        out.append("Each tier that can hold the model is timed at load on rows drawn from the model's own "
                   "thresholds; a batch takes the fastest at the largest measured size it reaches. ns/row "
                   "as measured at load (one thread), per batch size; why: the measured figures behind each "
                   "change of tier; excluded: the tiers that could not take part, and why.\n")
        out.append(_table(["model", "engine", "large batches", "by batch rows", "why", "ns/row at load", "excluded",
                           "source"], [
            [r["model"], r["engine"], r["tier"],
             ", ".join(f"{size}: {tier}" for size, tier in r["tiers"]["by_batch_rows"].items()),
             tier_reason(r["tiers"]),
             "; ".join(f"{tier} " + "/".join(f"{v:.0f}" for v in sizes.values())
                       for tier, sizes in r["tiers"]["ns_per_row"].items()),
             "; ".join(f"{tier}: {why}" for tier, why in r["tiers"]["excluded"].items()) or "-",
             r["tiers"]["source"]] for r in chosen]))
    ratios = best_peer_ratios(k)
    lat = {(r["model"], r["batch"], r["engine"]): r for r in k["latency"]}
    rows = []
    for e in ratios["latency"]:
        cells = [e["model"], e["batch"]]
        for name in engines:
            r = lat.get((e["model"], e["batch"], name))
            cells.append(f"{r['median_us']:.1f} / {r['p99_us']:.1f}" if r else "-")
        cells += [e.get("best_peer"), e.get("ratio_to_best"), e.get("ratio_to_lightgbm")]
        rows.append(cells)
    out.append("\n### Latency per call, one thread: median / p99 microseconds\n")
    out.append("Ratio = Scoreline's latency / the peer's (below 1: Scoreline is faster).\n")
    out.append(_table(["model", "batch"] + engines + ["best exact peer", "ratio to best", "ratio to LightGBM"], rows))
    thr = {(r["model"], r["rows"], r["threads"], r["engine"]): r for r in k["throughput"]}
    rows = []
    for e in ratios["throughput"]:
        cells = [e["model"], e["rows"], e["threads"]]
        for name in engines:
            r = thr.get((e["model"], e["rows"], e["threads"], name))
            cells.append(r["rows_per_s"] / 1e6 if r else None)
        cells += [e.get("best_peer"), e.get("ratio_to_best"), e.get("ratio_to_lightgbm")]
        rows.append(cells)
    out.append("\n### Bulk throughput, million rows per second\n")
    out.append("Ratio = Scoreline's throughput / the peer's (above 1: Scoreline is faster).\n")
    out.append(_table(["model", "rows", "threads"] + engines + ["best exact peer", "ratio to best", "ratio to LightGBM"], rows))
    return "\n".join(out)


def tier_reason(tiers: dict) -> str:
    """Why the engine took its tier at each batch size where the choice changes, from the figures
    measured at load (``LightGBMModel.tiers``): "from 64 rows: simd 21 ns/row, 2.3x faster than
    generic (48)"; a tier alone in the running, or one pinned, says so."""
    if tiers["source"] == "pinned":
        return "pinned (compile= at load): nothing measured"
    parts, previous = [], None
    for size, tier in tiers["by_batch_rows"].items():
        if tier == previous:
            continue
        previous = tier
        ns = {t: by_size[size] for t, by_size in tiers["ns_per_row"].items() if size in by_size}
        rivals = sorted((v, t) for t, v in ns.items() if t != tier)
        where = f"from {size} row{'s' if size != '1' else ''}: {tier}"
        if tier not in ns:
            parts.append(f"{where} (not measured at this size)")
        elif not rivals:
            parts.append(f"{where} {ns[tier]:.0f} ns/row, the only tier measured")
        elif rivals[0][0] >= ns[tier]:
            parts.append(f"{where} {ns[tier]:.0f} ns/row, {rivals[0][0] / ns[tier]:.1f}x faster than "
                         f"{rivals[0][1]} ({rivals[0][0]:.0f})")
        else:  # a faster tier was measured but is not ready (e.g. the compiled tier is still building)
            parts.append(f"{where} {ns[tier]:.0f} ns/row; {rivals[0][1]} measured faster ({rivals[0][0]:.0f}) "
                         "but not ready")
    if tiers["source"] == "cached":
        parts.append("measured at an earlier load (cached choice)")
    if tiers.get("pending"):
        parts.append("compiled tier still building when timed")
    return "; ".join(parts)


# ----------------------------------------------------------------------------- plots

def _plots(results: dict, out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        results.setdefault("skipped", []).append("plots: skipped: matplotlib is not installed (pip install -e '.[bench]')")
        return []
    made = []
    kernels = results.get("kernels") or {}
    if kernels.get("latency"):
        made.append(_grid_plot(plt, out / "latency_vs_batch.png", kernels["latency"], "batch", "median_us",
                               "rows per call", "median latency per call (us), one thread", log_x=True))
    if kernels.get("throughput"):
        largest = {}
        for r in kernels["throughput"]:
            largest[r["model"]] = max(largest.get(r["model"], 0), r["rows"])
        rows = [dict(r, mrows=r["rows_per_s"] / 1e6) for r in kernels["throughput"] if r["rows"] == largest[r["model"]]]
        made.append(_grid_plot(plt, out / "throughput_vs_threads.png", rows, "threads", "mrows",
                               "threads", "million rows per second", log_x=False, log_y=False))
    http = results.get("http") or {}
    if http.get("points"):
        made.append(_http_plot(plt, out / "http_latency_vs_concurrency.png", http["points"]))
    scaling = results.get("scaling") or {}
    if scaling.get("points"):
        made.append(_scaling_plot(plt, out / "scaling.png", scaling["points"]))
    return [str(p) for p in made]


def _grid_plot(plt, path, rows, x, y, xlabel, ylabel, log_x=True, log_y=True):
    model_names = list(dict.fromkeys(r["model"] for r in rows))
    cols = min(3, len(model_names))
    nrows = math.ceil(len(model_names) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.6 * nrows), squeeze=False)
    for ax, model in zip(axes.flat, model_names):
        for engine in ENGINES:
            pts = sorted((r[x], r[y]) for r in rows if r["model"] == model and r["engine"] == engine)
            if pts:
                # One colour per engine in every plot, whichever engines ran on this model.
                ax.plot(*zip(*pts), marker="o", label=engine, color=f"C{ENGINES.index(engine) % 10}",
                        lw=2.5 if engine == "scoreline" else 1.2)
        ax.set_title(model, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel, fontsize=8)
        if log_x:
            ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        _plain_ticks(ax, sorted({r[x] for r in rows if r["model"] == model}))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(model_names):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _plain_ticks(ax, xs) -> None:
    """Ticks at the measured x values, written as plain numbers (not 2x10^0)."""
    from matplotlib.ticker import NullFormatter

    ax.set_xticks(xs)
    ax.set_xticklabels([f"{x:,}" for x in xs], fontsize=8)
    ax.xaxis.set_minor_formatter(NullFormatter())


def _http_plot(plt, path, points):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for server in dict.fromkeys(p["server"] for p in points):
        pts = sorted((p["concurrency"], p["p50_ms"], p["p99_ms"], p["rps"]) for p in points if p["server"] == server)
        c, p50, p99, rps = zip(*pts)
        line = axes[0].plot(c, p50, marker="o", label=f"{server} p50")[0]
        axes[0].plot(c, p99, marker="x", ls="--", color=line.get_color(), label=f"{server} p99")
        axes[1].plot(c, rps, marker="o", label=server)
    axes[0].set(xscale="log", yscale="log", xlabel="concurrency", ylabel="latency (ms)", title="HTTP latency")
    axes[1].set(xscale="log", xlabel="concurrency", ylabel="requests per second", title="HTTP throughput")
    for ax in axes:
        _plain_ticks(ax, sorted({p["concurrency"] for p in points}))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _scaling_plot(plt, path, points):
    axes_names = list(dict.fromkeys(p["sweep"] for p in points))
    fig, axes = plt.subplots(1, len(axes_names), figsize=(4.5 * len(axes_names), 3.6), squeeze=False)
    for ax, sweep in zip(axes.flat, axes_names):
        for engine in dict.fromkeys(p["engine"] for p in points if p["sweep"] == sweep):
            pts = sorted((p["x"], p["ns_per_row"]) for p in points if p["sweep"] == sweep and p["engine"] == engine)
            ax.plot(*zip(*pts), marker="o", label=engine)
        ax.set(xscale="log", yscale="log", xlabel=sweep, ylabel="ns per row (one thread)", title=f"cost vs {sweep}")
        _plain_ticks(ax, sorted({p["x"] for p in points if p["sweep"] == sweep}))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
