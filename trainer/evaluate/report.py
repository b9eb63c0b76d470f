"""The evaluation report: JSON with every figure and its settings, a DSR-vs-preservation plot, image grids."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

from ..atomic import write_atomic, write_text_atomic

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def write_json(data: dict, path: Path) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, default=str))


def plot_points(report: dict) -> dict[str, list[tuple[str, float, float]]]:
    """{attack: [(method, 1 − LPIPS, DSR), …]} from a report's results."""
    out: dict[str, list] = {}
    for method, res in report["results"].items():
        x = res.get("preservation", {}).get("one_minus_lpips")
        for attack, a in res.get("attacks", {}).items():
            if x is not None and a.get("dsr") is not None:
                out.setdefault(attack, []).append((method, float(x), float(a["dsr"])))
    return out


OTHER = (200, 200, 200)  # the rows not named in `highlight`
NAMED = [c for c in PALETTE if c != (127, 127, 127)]  # a gray method would read as one of the OTHER points
SHAPES = ("circle", "square", "triangle")


def point_styles(methods: list[str], highlight: list[str] | None = None) -> dict[str, tuple]:
    """{method: (colour, shape, size rank)}. Past the palette's nine colours the shape changes, so no two methods
    look alike; with `highlight`, only those get colours and the rest are small gray points behind them (a table of
    two dozen rows is otherwise unreadable)."""
    named = [m for m in methods if highlight is None or m in highlight]
    out = {m: (OTHER, "circle", len(named)) for m in methods}
    for i, m in enumerate(named):
        out[m] = (NAMED[i % len(NAMED)], SHAPES[(i // len(NAMED)) % len(SHAPES)], i)
    return out


def plot(report: dict, path: Path, title: str = "", highlight: list[str] | None = None) -> Path:
    """DSR (y) against prior preservation 1 − LPIPS (x), one panel per attack, one point per method (the
    paper's Fig. 4 layout: up and to the right is better). matplotlib when installed, else drawn with PIL.
    `highlight`: the methods to colour and name (default: all)."""
    points = plot_points(report)
    styles = point_styles(list(report["results"]), highlight)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return _plot_pil(points, styles, Path(path), title)
    return _plot_matplotlib(points, styles, Path(path), title)


def _x_range(points) -> tuple[float, float]:
    xs = [x for pts in points.values() for _, x, _ in pts] or [1.0]
    lo = min(min(xs) - 0.05, 0.8)
    return max(0.0, lo), 1.0 + (1.0 - max(0.0, lo)) * 0.04


def _plot_matplotlib(points, styles, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(points))
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4), squeeze=False)
    x0, x1 = _x_range(points)
    for ax, (attack, pts) in zip(axes[0], points.items()):
        for method, x, y in sorted(pts, key=lambda p: styles[p[0]][0] != OTHER):  # gray ones first, beneath
            c, shape, rank = styles[method]
            other = c == OTHER
            ax.scatter([x], [y], color=[tuple(v / 255 for v in c)], s=10 if other else max(12, 120 - 20 * rank),
                       marker={"circle": "o", "square": "s", "triangle": "^"}[shape],
                       label=None if other else method, edgecolors="gray" if other else "black",
                       zorder=1 if other else 2 + rank)
        ax.set_xlim(x0, x1)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(attack)
        ax.set_xlabel("prior preservation (1 - LPIPS)")
        ax.set_ylabel("defense success rate")
        ax.grid(alpha=0.3)
    if any(c == OTHER for c, _, _ in styles.values()):
        axes[0][-1].scatter([], [], color=[tuple(v / 255 for v in OTHER)], s=10, edgecolors="gray",
                            label="the table's other rows")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        return write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)


def _mark(d, cx: float, cy: float, r: float, colour, shape: str, outline="black") -> None:
    if shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour, outline=outline)
    elif shape == "triangle":
        d.polygon([(cx, cy - r * 1.2), (cx - r * 1.1, cy + r * 0.8), (cx + r * 1.1, cy + r * 0.8)], fill=colour,
                  outline=outline)
    else:
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour, outline=outline)


def _plot_pil(points, styles, path: Path, title: str) -> Path:
    from ..previews import save_png

    panel_w, panel_h, margin, top = 330, 300, 46, 34
    legend = [m for m, (colour, _, _) in styles.items() if colour != OTHER]  # in the report's order
    others = len(legend) < len(styles)
    legend_h = 16 * (len(legend) + others) + 10
    n = max(1, len(points))
    sheet = Image.new("RGB", (n * panel_w + 10, top + panel_h + legend_h), "white")
    d = ImageDraw.Draw(sheet)
    if title:
        d.text((10, 4), title, fill="black")
    x0, x1 = _x_range(points)
    for k, (attack, pts) in enumerate(points.items()):
        left, ptop = 10 + k * panel_w + margin, top
        w, h = panel_w - margin - 14, panel_h - 46
        d.text((left + w // 2 - 3 * len(attack), ptop - 14), attack, fill="black")
        d.rectangle([left, ptop, left + w, ptop + h], outline="black")

        def px(x, y):
            return left + (x - x0) / (x1 - x0) * w, ptop + (1 - (y + 0.03) / 1.06) * h

        for i in range(6):  # gridlines and ticks: DSR 0..1, preservation x0..1
            y = i / 5
            _, yy = px(x0, y)
            d.line([left, yy, left + w, yy], fill=(225, 225, 225))
            d.text((left - 26, yy - 6), f"{y:.1f}", fill="black")
            xv = x0 + (1.0 - x0) * i / 5
            xx, _ = px(xv, 0)
            d.line([xx, ptop, xx, ptop + h], fill=(225, 225, 225))
            d.text((xx - 10, ptop + h + 4), f"{xv:.2f}", fill="black")
        d.rectangle([left, ptop, left + w, ptop + h], outline="black")
        d.text((left + w // 2 - 80, ptop + h + 18), "prior preservation (1 - LPIPS)", fill="black")
        d.text((left - margin + 2, ptop - 14), "DSR", fill="black")
        for method, x, y in sorted(pts, key=lambda p: styles[p[0]][0] != OTHER):  # gray ones first, beneath
            colour, shape, rank = styles[method]
            cx, cy = px(x, y)
            if colour == OTHER:
                _mark(d, cx, cy, 2.5, colour, shape, outline=(150, 150, 150))
            else:  # later methods drawn smaller: points on the same spot stay visible
                _mark(d, cx, cy, max(3, 10 - 1.5 * rank), colour, shape)
    for i, method in enumerate(legend + (["the table's other rows"] if others else [])):
        y = top + panel_h + 4 + 16 * i
        colour, shape, _ = styles.get(method, (OTHER, "circle", 0))
        _mark(d, 21, y + 7, 5, colour, shape)
        d.text((32, y + 1), method, fill="black")
    return save_png(sheet, path)


def image_grid(rows: dict[str, list], labels: list[str] | None = None, columns: int = 8, cell: int = 64):
    """One row per method, the first `columns` images of each."""
    from ..previews import grid

    names = list(rows)
    return grid([rows[n][:columns] for n in names], names, labels[:columns] if labels else None, cell=cell)
