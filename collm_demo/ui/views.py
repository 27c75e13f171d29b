"""Presentation helpers every tab shares: placeholder figures, text shortening, colours, and
the fitted embedding-map layout drawn as plotly traces. Pure functions of plain values: no
state, no model."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

WARM_COLOUR, COLD_COLOUR = "#4C6EF5", "#F08C00"  # warm / cold items; also CoLLM / text-only in charts
CANDIDATE_COLOUR = "#C92A2A"


def shorten(text: str, n: int = 34) -> str:
    """``text`` cut to ``n`` characters with an ellipsis."""
    return text if len(text) <= n else text[: n - 1] + "…"


def empty_figure(message: str, height: int = 360) -> go.Figure:
    """A figure that only says ``message`` (nothing to plot yet, or why there is nothing)."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font=dict(size=14))
    fig.update_layout(height=height, xaxis_visible=False, yaxis_visible=False, template="plotly_white",
                      margin=dict(l=10, r=10, t=30, b=10))
    return fig


def cf_label(pipe) -> str:
    """'MF', 'LightGCN', 'toy (imported)', ... for the CF model of a pipeline (from the registry)."""
    if pipe.cf is None:
        return "CF"
    return pipe.backend.display_name(pipe.cf.kind, short=True)


POPULARITY_TICKS = (1, 3, 10, 30, 100, 300)  # training interactions, on the log colour bar


def layout_traces(points: list[dict], color_by: str = "popularity", show_words: bool = True,
                  faint: bool = False, mean_rating: dict[str, float] | None = None) -> list[go.BaseTraceType]:
    """A fitted layout's points: items, users, words. Items are coloured by ``color_by``:
    "popularity" (training interactions, log colour bar), "rating" (mean training rating from
    ``mean_rating``, 1-5: the axis the item tokens spread along, so the Embedding tab's default),
    or "warm" (warm / cold). Numbers a student can read, not 19 genre colours."""
    traces = item_traces([p for p in points if p["kind"] == "item"], color_by, faint, mean_rating)
    users = [p for p in points if p["kind"] == "user"]
    traces.append(go.Scattergl(
        x=[p["x"] for p in users], y=[p["y"] for p in users], mode="markers", name="user tokens",
        marker=dict(size=6, color="#868E96", opacity=0.35 if not faint else 0.15, symbol="diamond"),
        text=[f"user {p['key']} · {p['popularity']} training interactions" for p in users],
        hovertemplate="%{text}<extra>user token</extra>"))
    if show_words:
        words = [p for p in points if p["kind"] == "word"]
        traces.append(go.Scattergl(
            x=[p["x"] for p in words], y=[p["y"] for p in words], mode="markers", name="vocabulary words",
            marker=dict(size=7, color="#2B8A3E", opacity=0.45 if not faint else 0.2, symbol="x-thin",
                        line=dict(width=1, color="#2B8A3E")),
            text=[f"word token “{p['label']}”" for p in words], hovertemplate="%{text}<extra>word</extra>"))
    return traces


def item_traces(items: list[dict], color_by: str, faint: bool = False,
                mean_rating: dict[str, float] | None = None) -> list[go.BaseTraceType]:
    """The layout's item points, sized by popularity and coloured by ``color_by`` (see ``layout_traces``):
    one trace on a colour bar (and one grey for items without a value), or a warm and a cold trace."""
    pops = np.array([p["popularity"] for p in items], dtype=float)
    top = max(1.0, float(pops.max()) if len(pops) else 1.0)

    def size(p):
        return 5 + 9 * np.sqrt(p["popularity"] / top)

    def hover(p):
        rating = (mean_rating or {}).get(p["key"])
        return (f"<b>{p['label']}</b> · #{p['key']}<br>{p['popularity']} training interactions"
                + (f" · mean rating {rating:.2f}" if rating is not None else "")
                + f" · {'warm' if p['warm'] else 'cold'}<br>{p['genre']}")

    traces = []
    opacity = 0.25 if faint else 0.75
    if color_by in ("popularity", "rating") and items:
        rated, unrated, marker = _colour_scale(items, color_by, top, mean_rating)
        if faint:
            marker.pop("colorbar")
        traces.append(go.Scattergl(
            x=[p["x"] for p in rated], y=[p["y"] for p in rated], mode="markers", name="item tokens",
            marker=marker | dict(size=[size(p) for p in rated], opacity=opacity, line_width=0),
            text=[hover(p) for p in rated], hovertemplate="%{text}<extra>item token</extra>"))
        groups = [("items without training ratings", "#ADB5BD", unrated)]
    else:
        groups = [("warm items", WARM_COLOUR, [p for p in items if p["warm"]]),
                  ("cold items", COLD_COLOUR, [p for p in items if not p["warm"]])]
    for name, color, part in groups:
        if not part:
            continue
        traces.append(go.Scattergl(
            x=[p["x"] for p in part], y=[p["y"] for p in part], mode="markers", name=name,
            marker=dict(size=[size(p) for p in part], color=color, opacity=opacity, line_width=0),
            text=[hover(p) for p in part], hovertemplate="%{text}<extra>item token</extra>"))
    return traces


def _colour_scale(items: list[dict], color_by: str, top: float, mean_rating: dict[str, float] | None
                  ) -> tuple[list[dict], list[dict], dict]:
    """(items with a value, items without, the plotly marker with its colour bar) for "rating" or "popularity"."""
    colorbar = dict(thickness=14, len=0.75, y=0.55, tickfont_size=13, title=dict(side="right", font_size=13))
    if color_by == "rating":
        rated = [p for p in items if (mean_rating or {}).get(p["key"]) is not None]
        unrated = [p for p in items if (mean_rating or {}).get(p["key"]) is None]
        return rated, unrated, dict(color=[mean_rating[p["key"]] for p in rated], cmin=1, cmax=5, colorscale="RdYlBu",
                                    colorbar=colorbar | dict(title=dict(text="mean rating", side="right", font_size=13)))
    # log scale: most items have a handful of interactions, a few have hundreds
    ticks = [t for t in POPULARITY_TICKS if t <= top] or [1]
    return items, [], dict(color=[np.log10(1 + p["popularity"]) for p in items], cmin=0, cmax=float(np.log10(1 + top)),
                           colorscale="Viridis",
                           colorbar=colorbar | dict(tickvals=[float(np.log10(1 + t)) for t in ticks],
                                                    ticktext=[str(t) for t in ticks],
                                                    title=dict(text="training interactions", side="right",
                                                               font_size=13)))


def spread_labels(xy: list[tuple[float, float]], offsets: list[tuple[float, float]],
                  alternate: bool = False, aspect: float = 1.0) -> list[int]:
    """For each point, the index of the label offset (in the points' own units) that keeps its
    label farthest from the labels already placed and from the other points: a greedy choice,
    in order, so the first points get the best spots. ``alternate``: never the same offset as
    the previous point (neighbours on a path, k=1 → k=3, then never stack their labels).
    ``aspect``: how much wider than tall a label is (horizontal distances count that much less)."""
    scale = np.array([1.0 / aspect, 1.0])
    pts = np.asarray(xy, dtype=float).reshape(-1, 2) * scale
    offsets = [tuple(np.asarray(o, dtype=float) * scale) for o in offsets]
    placed: list[np.ndarray] = []
    chosen: list[int] = []
    for n, point in enumerate(pts):
        others = np.delete(pts, n, axis=0)
        best, best_score = 0, -np.inf
        for j, offset in enumerate(offsets):
            if alternate and chosen and j == chosen[-1] and len(offsets) > 1:
                continue
            centre = point + np.asarray(offset)
            near_label = min((float(np.hypot(*(centre - c))) for c in placed), default=np.inf)
            near_point = float(np.hypot(*(others - centre).T).min()) if len(others) else np.inf
            score = min(near_label, 2 * near_point)
            if score > best_score + 1e-9:
                best, best_score = j, score
        chosen.append(best)
        placed.append(point + np.asarray(offsets[best]))
    return chosen
