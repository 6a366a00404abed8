"""The scaling picture: ticks/s against replicas, one line per engine, as a standalone SVG.

Written by hand (no plotting dependency). ``ringflow`` is the best row per replica count
(over the source replica counts tried); ``ideal`` is ringflow's one-replica rate times the
replica count; ``single_process`` runs one replica by definition and is drawn as a
horizontal reference line across the chart.
"""

from __future__ import annotations

from html import escape
from typing import Any

WIDTH, HEIGHT = 760, 440
LEFT, RIGHT, TOP, BOTTOM = 80, 200, 50, 60
COLORS = {
    "ringflow": "#d62728",
    "ideal": "#7f7f7f",
    "single_process": "#1f77b4",
    "mp_queue": "#2ca02c",
    "bytewax": "#9467bd",
    "ray": "#ff7f0e",
}


def best_per_replicas(rows: list[dict[str, Any]], engine: str) -> dict[int, float]:
    best: dict[int, float] = {}
    for row in rows:
        if row["engine"] == engine:
            r = row["replicas"]
            best[r] = max(best.get(r, 0.0), float(row["ticks_per_s"]))
    return dict(sorted(best.items()))


def _nice_step(top: float) -> float:
    raw = top / 5
    magnitude = 10 ** len(str(int(raw))) / 10 if raw >= 1 else 1.0
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * magnitude:
            return m * magnitude
    return 10 * magnitude


def _label(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    if value >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def _fit(text: str, room: float) -> str:
    """A smaller font size for a line of 12 px text that would run past ``room`` pixels
    (about 0.55 em a character), and nothing when it fits."""
    size = room / (len(text) * 0.55)
    return "" if size >= 12 else f' font-size="{int(size * 10) / 10:g}"'


def scaling_svg(rows: list[dict[str, Any]], title: str, subtitle: str = "") -> str:
    series = {e: best_per_replicas(rows, e) for e in COLORS if e != "ideal"}
    series = {e: pts for e, pts in series.items() if pts}
    ringflow = series.get("ringflow", {})
    replicas = sorted({r for pts in series.values() for r in pts}) or [1]
    max_r = max(replicas)
    if 1 in ringflow:
        series["ideal"] = {r: ringflow[1] * r for r in range(1, max_r + 1)}
    top = max((v for pts in series.values() for v in pts.values()), default=1.0)
    step = _nice_step(top * 1.05)
    y_max = step * (int(top * 1.05 / step) + 1)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(r: float) -> float:
        return LEFT + (plot_w * (r - 1) / (max_r - 1) if max_r > 1 else plot_w / 2)

    def y(v: float) -> float:
        return TOP + plot_h * (1 - v / y_max)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{escape(title)}</text>',
        f'<text x="{LEFT}" y="38" fill="#555"{_fit(subtitle, WIDTH - LEFT - 10)}>'
        f"{escape(subtitle)}</text>",
    ]
    tick = 0.0
    while tick <= y_max + 1e-9:
        ty = y(tick)
        out.append(
            f'<line x1="{LEFT}" y1="{ty:.1f}" x2="{LEFT + plot_w}" y2="{ty:.1f}" stroke="#e5e5e5"/>'
        )
        out.append(f'<text x="{LEFT - 8}" y="{ty + 4:.1f}" text-anchor="end">{_label(tick)}</text>')
        tick += step
    for r in range(1, max_r + 1):
        tx = x(r)
        out.append(
            f'<line x1="{tx:.1f}" y1="{TOP + plot_h}" x2="{tx:.1f}" y2="{TOP + plot_h + 5}" '
            'stroke="black"/>'
        )
        out.append(f'<text x="{tx:.1f}" y="{TOP + plot_h + 20}" text-anchor="middle">{r}</text>')
    out.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" '
        'stroke="black"/>'
    )
    out.append(
        f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 15}" text-anchor="middle">'
        "aggregation replicas (R)</text>"
    )
    out.append(
        f'<text x="18" y="{TOP + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 18 {TOP + plot_h / 2})">ticks/s (processing time)</text>'
    )
    legend_y = TOP + 10
    for engine, points in series.items():
        color = COLORS[engine]
        dash = {"ideal": ' stroke-dasharray="6 4"', "single_process": ' stroke-dasharray="2 3"'}
        style = dash.get(engine, "")
        if engine == "single_process":
            v = points[min(points)]
            out.append(
                f'<line x1="{LEFT}" y1="{y(v):.1f}" x2="{LEFT + plot_w}" y2="{y(v):.1f}" '
                f'stroke="{color}" stroke-width="2"{style}/>'
            )
        else:
            coords = " ".join(f"{x(r):.1f},{y(v):.1f}" for r, v in points.items())
            out.append(
                f'<polyline points="{coords}" fill="none" stroke="{color}" '
                f'stroke-width="2"{style}/>'
            )
            if engine != "ideal":
                for r, v in points.items():
                    out.append(
                        f'<circle cx="{x(r):.1f}" cy="{y(v):.1f}" r="3.5" fill="{color}">'
                        f"<title>{engine} R={r}: {v:,.0f} ticks/s</title></circle>"
                    )
        lx = LEFT + plot_w + 15
        out.append(
            f'<line x1="{lx}" y1="{legend_y}" x2="{lx + 24}" y2="{legend_y}" stroke="{color}" '
            f'stroke-width="2"{style}/>'
        )
        label = "ideal (R x ringflow R=1)" if engine == "ideal" else engine
        out.append(f'<text x="{lx + 30}" y="{legend_y + 4}">{label}</text>')
        legend_y += 20
    out.append("</svg>")
    return "\n".join(out) + "\n"
