"""Presentation helpers every tab shares: placeholder figures, text shortening, colours, and
the fitted embedding-map layout drawn as plotly traces. Pure functions of plain values: no
state, no model."""

from __future__ import annotations

import numpy as np
import plotly.colors as pc
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
    spec = pipe.backend
    if spec.imported or str(pipe.cf.kind).startswith("imported"):
        return f"{spec.name} (imported)"
    return spec.short


def layout_traces(points: list[dict], color_by: str = "warm", show_words: bool = True,
                  faint: bool = False) -> list[go.BaseTraceType]:
    """A fitted layout's points: items (coloured by warm/cold or genre), users, words."""
    items = [p for p in points if p["kind"] == "item"]
    pops = np.array([p["popularity"] for p in items], dtype=float)
    top = max(1.0, float(pops.max()) if len(pops) else 1.0)

    def size(p):
        return 3 + 9 * np.sqrt(p["popularity"] / top)

    traces = []
    opacity = 0.25 if faint else 0.7
    if color_by == "genre":
        genres = sorted({p["genre"] for p in items}, key=lambda g: -sum(q["genre"] == g for q in items))
        palette = pc.qualitative.Dark24 + pc.qualitative.Light24
        groups = [(g, palette[n % len(palette)], [p for p in items if p["genre"] == g]) for n, g in enumerate(genres)]
    else:
        groups = [("warm items", WARM_COLOUR, [p for p in items if p["warm"]]),
                  ("cold items", COLD_COLOUR, [p for p in items if not p["warm"]])]
    for name, color, part in groups:
        if not part:
            continue
        traces.append(go.Scattergl(
            x=[p["x"] for p in part], y=[p["y"] for p in part], mode="markers", name=name,
            marker=dict(size=[size(p) for p in part], color=color, opacity=opacity, line_width=0),
            text=[f"<b>{p['label']}</b> · #{p['key']}<br>{p['genre']} · {p['popularity']} training "
                  f"interactions · {'warm' if p['warm'] else 'cold'}" for p in part],
            hovertemplate="%{text}<extra>item token</extra>"))
    users = [p for p in points if p["kind"] == "user"]
    traces.append(go.Scattergl(
        x=[p["x"] for p in users], y=[p["y"] for p in users], mode="markers", name="user tokens",
        marker=dict(size=4, color="#868E96", opacity=0.35 if not faint else 0.15, symbol="diamond"),
        text=[f"user {p['key']} · {p['popularity']} training interactions" for p in users],
        hovertemplate="%{text}<extra>user token</extra>"))
    if show_words:
        words = [p for p in points if p["kind"] == "word"]
        traces.append(go.Scattergl(
            x=[p["x"] for p in words], y=[p["y"] for p in words], mode="markers", name="vocabulary words",
            marker=dict(size=5, color="#2B8A3E", opacity=0.45 if not faint else 0.2, symbol="x-thin",
                        line=dict(width=1, color="#2B8A3E")),
            text=[f"word token “{p['label']}”" for p in words], hovertemplate="%{text}<extra>word</extra>"))
    return traces
