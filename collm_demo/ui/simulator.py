"""The cold-start simulator of the Warm vs cold tab: pretend an item is new.

It takes one item, keeps k of its training interactions (seeded choice, nested: the 1 kept
interaction is among the 3, the 3 among the 10), refits the item's CF vector from them with the
pipeline's ``refit_item`` (``CFModel.fold_in_item``: user vectors frozen), and shows how the
item's CoLLM score for the current user and its map position move. The text-only score cannot
move: the text prompt never sees the CF vector. After every scoring it reruns on the result's
most-rated candidate (a slow refresh: the page runs it last).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..errors import InputError
from . import core
from .memo import memoize
from .page import Page, Refresh, gr_error
from .parsing import SEED_MAX, parse_seed
from .state import AppState
from .values import Profile, ScoredResult
from .views import (
    CANDIDATE_COLOUR,
    COLD_COLOUR,
    WARM_COLOUR,
    cf_label,
    empty_figure,
    layout_traces,
    shorten,
    spread_labels,
)

if TYPE_CHECKING:
    import gradio as gr

K_CHOICES = ["0", "1", "3", "10", "all"]
SIM_HEIGHT = 420  # both simulator figures: the same height side by side


def item_train_interactions(state: AppState, item: str, cf_name: str | None = None) -> pd.DataFrame:
    """The item's training interactions by users the CF model knows (their vectors stay frozen)."""
    inter = state.dataset.interactions
    rows = inter[(inter["split"] == "train") & (inter["item"] == item)][["user", "label", "timestamp"]]
    cf = state.pipeline(cf_name).cf
    return rows[[cf.has_user(u) for u in rows["user"]]] if len(rows) else rows


def simulator_items(state: AppState) -> list[tuple[str, str]]:
    catalog = state.catalog
    return [(f"{catalog.item_label(i)} · {catalog.item_train.get(i, 0)} train", i)
            for i in sorted(catalog.item_ids, key=lambda i: -catalog.item_train.get(i, 0))
            if catalog.item_train.get(i, 0) > 0]


def default_sim_item(state: AppState, result: ScoredResult | None) -> str:
    if result:
        warm = [r for r in result.rows if r.n_train > 0]
        if warm:
            return max(warm, key=lambda r: r.n_train).item
    return simulator_items(state)[0][1]


def simulate(state: AppState, result: ScoredResult | None, item: str, seed: int = 0) -> dict:
    """Refit ``item`` from k = 0, 1, 3, 10, all of its training interactions; score each version
    (CF backend: the one the result was scored with)."""
    pipe = state.pipeline(result.cf if result else None)
    if not pipe.has_projector:
        raise InputError("The cold-start simulator needs a CF model and a projector (none loaded).")
    if item not in state.catalog.item_title:
        raise InputError(f"Unknown item {item!r}.")
    profile = core.profile_of(state, result)
    if not profile.items:
        raise InputError("The current history is empty; add movies in the Recommend tab first.")
    return _simulate(state, profile, item, parse_seed(seed), pipe.cf_name)


@memoize(64)
def _simulate(state: AppState, profile: Profile, item: str, seed: int, cf_name: str) -> dict:
    import torch

    pipe = state.pipeline(cf_name)
    cf, title = pipe.cf, state.dataset.title
    inter = item_train_interactions(state, item, cf_name)
    order = np.random.default_rng(seed).permutation(len(inter))
    users = inter["user"].to_numpy()[order].tolist()
    labels = inter["label"].to_numpy()[order].tolist()
    versions = []  # (name, k, vector)
    for choice in K_CHOICES:
        k = len(users) if choice == "all" else min(int(choice), len(users))
        versions.append((f"k = {choice}" + (f" (only {k} exist)" if choice != "all" and k < int(choice) else ""),
                         k, pipe.refit_item(users[:k], labels[:k])))
    in_cf = cf.has_item(item)
    versions.append(("trained vector (reference)" if in_cf else "no trained vector (default)", len(users),
                     cf.item_vectors([item])[0]))
    vecs = torch.stack([v for _, _, v in versions])
    uvec, _ = core.user_vector(state, profile, cf_name, for_tokens=True)
    alone_uvec, _ = core.user_vector(state, profile, cf_name)  # CF alone: its own fold-in strength
    s_cf, s_text = pipe.score_item_vectors(profile.items, profile.labels, item, uvec, vecs)
    s_alone = cf.score_vectors(alone_uvec.expand(len(versions), -1), vecs).tolist()
    positions = None
    if core.map_unavailable(state, cf_name) is None:
        positions = [(float(x), float(y)) for x, y in core.placed(state, cf_name, vecs)]
    rows = []
    for n, (name, k, vec) in enumerate(versions):
        rows.append({"version": name, "k": k, "liked": int(sum(labels[:k])) if n < len(K_CHOICES) else None,
                     "norm": float(vec.norm()), "alone": float(s_alone[n]), "collm": float(s_cf[n]), "text": s_text,
                     "xy": None if positions is None else positions[n]})
    fitted = core.layout_index(state, cf_name).get(("item", item)) if positions is not None else None
    return {"item": item, "title": title(item), "cf": cf_name, "cf_label": cf_label(pipe), "n_interactions": len(users), "rows": rows,
            "fitted_xy": fitted, "profile": profile.describe(), "seed": seed}


def simulation_table(sim: dict | None) -> pd.DataFrame:
    cols = ["item vector", "interactions kept (liked)", "vector norm", "CF model alone", "CoLLM score",
            "text-only score", "CoLLM − text-only"]
    if not sim:
        return pd.DataFrame(columns=cols)
    out = []
    for r in sim["rows"]:
        kept = f"{r['k']} ({r['liked']})" if r["liked"] is not None else f"all {r['k']} (jointly trained)"
        out.append([r["version"], kept, round(r["norm"], 3), round(r["alone"], 4), round(r["collm"], 4),
                    round(r["text"], 4), round(r["collm"] - r["text"], 4)])
    return pd.DataFrame(out, columns=cols)


def simulation_figure(sim: dict | None, selected: str = "all") -> go.Figure:
    if not sim:
        return empty_figure("Run the simulator.", height=SIM_HEIGHT)
    rows = sim["rows"][: len(K_CHOICES)]
    ref = sim["rows"][len(K_CHOICES)]
    labels = [f"k={c}" for c in K_CHOICES]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=labels, y=[r["collm"] for r in rows], mode="lines+markers", name="CoLLM score",
                             line=dict(color=WARM_COLOUR, width=3), marker_size=9))
    fig.add_trace(go.Scatter(x=labels, y=[r["text"] for r in rows], mode="lines", name="text-only score (no CF)",
                             line=dict(color=COLD_COLOUR, dash="dash", width=2)))
    fig.add_trace(go.Scatter(x=labels, y=[r["alone"] for r in rows], mode="lines+markers", name=f"{sim['cf_label']} alone",
                             line=dict(color="#868E96", width=1.5), marker_size=6))
    fig.add_hline(y=ref["collm"], line_dash="dot", line_color=WARM_COLOUR,
                  annotation_text="CoLLM with the trained vector", annotation_position="top left")
    if selected in K_CHOICES:
        n = K_CHOICES.index(selected)
        fig.add_trace(go.Scatter(x=[labels[n]], y=[rows[n]["collm"]], mode="markers", name=f"selected k={selected}",
                                 marker=dict(size=18, color="rgba(0,0,0,0)", line=dict(width=3, color=CANDIDATE_COLOUR))))
    # Every k on the axis, in order, with room for the markers at both ends (a categorical axis
    # otherwise ends at the last category's centre and the k=all marker half leaves the plot).
    fig.update_layout(height=SIM_HEIGHT, template="plotly_white", yaxis_title="P(Yes) for this user",
                      xaxis=dict(title="training interactions kept for the item", type="category",
                                 categoryorder="array", categoryarray=labels, range=[-0.5, len(labels) - 0.5]),
                      title=dict(text=f"{shorten(sim['title'], 40)}: scores for {sim['profile']}", font_size=14),
                      legend=dict(orientation="h", y=-0.25, yanchor="top", x=0, font_size=13),
                      margin=dict(l=10, r=10, t=50, b=10))
    return fig


# Text positions a k label may take, with the direction each puts the label in (x, y).
K_LABEL_SPOTS = [("top center", (0, 1)), ("bottom center", (0, -1)), ("middle right", (1.4, 0)),
                 ("middle left", (-1.4, 0)), ("top right", (1, 1)), ("bottom left", (-1, -1)),
                 ("top left", (-1, 1)), ("bottom right", (1, -1))]


def k_label_positions(rows: list[dict]) -> list[str]:
    """Text positions for the k labels of the refit path: k=1, k=3 and k=10 often land close
    together, so each label takes the freest side and never the same side as the previous k."""
    xy = [r["xy"] for r in rows]
    span = max(float(np.ptp([p[0] for p in xy])), float(np.ptp([p[1] for p in xy])), 1e-6)
    step = 0.08 * span
    chosen = spread_labels(xy, [(dx * step, dy * step) for _, (dx, dy) in K_LABEL_SPOTS], alternate=True)
    return [K_LABEL_SPOTS[j][0] for j in chosen]


def _clear_of_ring(text: str, where: str) -> str:
    """The selected k's label moved past its (larger) selection ring: plotly offsets text by the
    trace's own marker size only, so pad it on the side it sits (a blank line, or spaces)."""
    if where.startswith("top"):
        return f"{text}<br> "
    if where.startswith("bottom"):
        return f" <br>{text}"
    return f"\u2002\u2002{text}" if where.endswith("right") else f"{text}\u2002\u2002"


def simulation_map(state: AppState, sim: dict | None, selected: str = "all") -> go.Figure:
    if not sim or sim["rows"][0]["xy"] is None:
        return empty_figure(core.map_unavailable(state, (sim or {}).get("cf")) or "Run the simulator.",
                            height=SIM_HEIGHT)
    layout = state.assets.layout(sim["cf"])
    fig = go.Figure(layout_traces(layout["points"], "warm", show_words=False, faint=True))
    rows = sim["rows"][: len(K_CHOICES)]
    spots = k_label_positions(rows)
    if selected in K_CHOICES:  # first, so the k labels are drawn over its ring, not under it
        r = rows[K_CHOICES.index(selected)]
        fig.add_trace(go.Scatter(x=[r["xy"][0]], y=[r["xy"][1]], mode="markers", name=f"selected k={selected}",
                                 marker=dict(size=22, color="rgba(0,0,0,0)", line=dict(width=3, color="#000"))))
    fig.add_trace(go.Scatter(x=[r["xy"][0] for r in rows], y=[r["xy"][1] for r in rows], mode="lines+markers+text",
                             text=[_clear_of_ring(f"k={c}", where) if c == selected else f"k={c}"
                                   for c, where in zip(K_CHOICES, spots)], textposition=spots,
                             textfont=dict(size=13, color="#1a1a1a"), name="refit item (placed)",
                             line=dict(color=CANDIDATE_COLOUR, width=2), marker=dict(size=11, color=CANDIDATE_COLOUR)))
    if sim["fitted_xy"]:
        fig.add_trace(go.Scatter(x=[sim["fitted_xy"][0]], y=[sim["fitted_xy"][1]], mode="markers+text",
                                 text=["trained"], textposition="bottom center", name="trained vector (fitted layout)",
                                 marker=dict(size=16, symbol="star", color="#1C7ED6", line=dict(width=1, color="#000"))))
    xs = [r["xy"][0] for r in rows] + ([sim["fitted_xy"][0]] if sim["fitted_xy"] else [])
    ys = [r["xy"][1] for r in rows] + ([sim["fitted_xy"][1]] if sim["fitted_xy"] else [])
    pad = max(1.5, 0.3 * max(np.ptp(xs), np.ptp(ys)))
    fig.update_layout(height=SIM_HEIGHT, template="plotly_white", margin=dict(l=10, r=10, t=50, b=10),
                      title=dict(text="Where the refit item token lands<br><sup>zoomed; positions placed by nearest "
                                      "neighbours</sup>", font_size=14),
                      xaxis=dict(range=[min(xs) - pad, max(xs) + pad], showticklabels=False),
                      yaxis=dict(range=[min(ys) - pad, max(ys) + pad], showticklabels=False),
                      legend=dict(orientation="h", y=-0.04, yanchor="top", x=0, font_size=13))
    return fig


def simulation_text(sim: dict | None, selected: str = "all") -> str:
    if not sim:
        return ""
    rows = sim["rows"]
    n = K_CHOICES.index(selected) if selected in K_CHOICES else len(K_CHOICES) - 1
    r, ref, zero = rows[n], rows[len(K_CHOICES)], rows[0]
    move = ""
    if r["xy"] is not None and zero["xy"] is not None:
        dist = float(np.hypot(r["xy"][0] - zero["xy"][0], r["xy"][1] - zero["xy"][1]))
        move = f" On the map it sits {dist:.1f} units from the k=0 position."
    return (f"**{sim['title']}** has {sim['n_interactions']} training interactions by known users (seed "
            f"{sim['seed']} picks which to keep). With **k = {selected}** the refit item vector gives a CoLLM "
            f"score of **{r['collm']:.3f}** for {sim['profile']} (k=0, i.e. no CF information: {zero['collm']:.3f}; "
            f"trained vector: {ref['collm']:.3f}). The text-only score stays at **{r['text']:.3f}** whatever k is: "
            f"the text prompt has no slot for the CF vector.{move} The refit uses only the kept interactions with "
            "all user vectors frozen, so even k = all differs from the jointly trained vector.")


# ------------------------------------------------------------------------- widgets

def run_outputs(state: AppState, result: ScoredResult | None, item: str | None, seed, k: str) -> tuple:
    """Everything the simulator panel shows, for one item (default: picked from the result)."""
    item = item or default_sim_item(state, result)
    sim = simulate(state, result, item, seed)
    return (sim, item, simulation_text(sim, k), simulation_figure(sim, k), simulation_map(state, sim, k),
            simulation_table(sim))


@dataclass(frozen=True)
class SimulatorPanel:
    """The simulator's section of the Warm vs cold tab."""

    item: gr.Dropdown
    k: gr.Radio  # which version of the item vector the text and the marks are about
    seed: gr.Number  # which interactions are kept
    button: gr.Button
    sim: gr.State  # the last simulation (``simulate``'s value), redrawn when k changes
    text: gr.Markdown
    chart: gr.Plot
    map: gr.Plot
    table: gr.Dataframe

    @property
    def outputs(self) -> list:
        """What ``run_outputs`` fills, in its order."""
        return [self.sim, self.item, self.text, self.chart, self.map, self.table]

    def after_scoring(self, page: Page) -> Refresh:
        """After every scoring: rerun on the result's most-rated candidate (slow: seconds), or clear."""
        import gradio as gr

        state = page.state

        def after_score(result, seed, k):
            if not state.pipeline(result.cf if result else None).has_projector:
                return (None, gr.update(), simulation_text(None), simulation_figure(None), simulation_map(state, None),
                        simulation_table(None))
            try:
                return run_outputs(state, result, None, seed, k)
            except InputError:
                return (None, gr.update(), "", simulation_figure(None), simulation_map(state, None),
                        simulation_table(None))
        return Refresh(after_score, [page.result, self.seed, self.k], self.outputs, slow=True)

    def wire(self, page: Page) -> None:
        import gradio as gr

        state = page.state

        @gr_error
        def run(result, item, seed, k, progress=gr.Progress()):
            progress(0.1, desc="refitting the item and scoring")
            return run_outputs(state, result, item, seed, k)

        def reselect(sim, k):
            return simulation_text(sim, k), simulation_figure(sim, k), simulation_map(state, sim, k)

        self.button.click(run, [page.result, self.item, self.seed, self.k], self.outputs)
        self.k.input(reselect, [self.sim, self.k], [self.text, self.chart, self.map])


def build(state: AppState) -> SimulatorPanel:
    """The simulator's section (inside the open Warm vs cold tab)."""
    import gradio as gr

    gr.Markdown("### Cold-start simulator")
    gr.Markdown("Pretend an item is new: keep only **k** of its training interactions, refit its CF vector from "
                "them (the users' vectors stay frozen), and watch its CoLLM score for the current user move — "
                "while the text-only score cannot. The current user is the one scored last in the Recommend tab; "
                "after each scoring the simulator reruns on that selection's most-rated candidate.",
                elem_classes=["note"])
    with gr.Row():
        item = gr.Dropdown(simulator_items(state), value=None, label="Item (most-rated first)",
                           filterable=True, min_width=280, elem_id="sim-item")
        k = gr.Radio(K_CHOICES, value="3", label="Training interactions kept (k)", min_width=240)
        seed = gr.Number(0, precision=0, minimum=0, maximum=SEED_MAX, label="Seed (which interactions)",
                         min_width=120)
    button = gr.Button("Run the simulator", variant="primary", elem_id="sim-btn")
    sim = gr.State(None)
    text = gr.Markdown()
    with gr.Row(equal_height=False):
        # No label badges: the figures have titles (a badge would sit on them, and Gradio then
        # adds a 100 px top margin to make room).
        chart = gr.Plot(simulation_figure(None), show_label=False, min_width=320, elem_id="sim-chart")
        # Not simulation_map(state, None): that asks the model why a map is missing, and the page
        # must be built from the dataset alone while the model loads (or fails to).
        sim_map = gr.Plot(empty_figure("Run the simulator.", height=SIM_HEIGHT), show_label=False,
                          min_width=320, elem_id="sim-map")
    table = gr.Dataframe(simulation_table(None), interactive=False, wrap=True,
                         column_widths=["20%", "20%", "11%", "12%", "12%", "12%", "13%"],
                         label="Every version of the item vector", elem_id="sim-table")
    return SimulatorPanel(item=item, k=k, seed=seed, button=button, sim=sim, text=text, chart=chart, map=sim_map,
                          table=table)
