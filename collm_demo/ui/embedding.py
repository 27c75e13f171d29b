"""Embedding space tab: where the CF tokens land among the LLM's word embeddings.

The 2-D layout is a UMAP computed once by ``python -m collm_demo embedding-map``
(jointly on mapped item tokens, mapped user tokens and a sample of word embeddings).
Vectors that were not in that fit (a composed or folded-in user, an item refit in the
cold-start simulator) are placed with ``embedding_map.place``: at the similarity-weighted
mean position of their 10 nearest fitted points. The app labels such points "placed".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from . import core
from .memo import memoize
from .page import Page, Refresh, Tab
from .state import AppState
from .values import ScoredResult, focus_choices
from .views import CANDIDATE_COLOUR, cf_label, empty_figure, layout_traces, shorten, spread_labels

if TYPE_CHECKING:
    import gradio as gr

# Mean rating first: in the shipped layouts (MF, LightGCN) the item tokens spread along it in one
# clean gradient, which reads best when projected; popularity is mixed along the band.
COLOR_CHOICES = [("mean rating", "rating"), ("popularity", "popularity"), ("warm / cold", "warm")]
MAP_HEIGHT = 640
COLOUR_NOTE = {
    "popularity": "Items are coloured (and sized) by how many training interactions they have (log scale): "
                  "popular and rare films are mixed along the band; mean rating orders it more cleanly. ",
    "rating": "Items are coloured by their mean training rating (1-5): the item tokens mostly spread along "
              "it, from poorly to well rated films, so a token carries much of an item's general appeal. ",
    "warm": "Items are coloured warm (enough training interactions for a trained CF vector) or cold. ",
}
LABELLED = 6  # candidates named on the map: the best few in the active ranking (and the inspected one)
LABEL_PX = 48  # how far (pixels) a name sits from its candidate, with an arrow back to it
# label directions around a candidate (pixels, y up): above, below, right, left, then the diagonals
LABEL_OFFSETS = [(0, 1), (0, -1), (1.3, 0), (-1.3, 0), (1, 0.8), (-1, 0.8), (1, -0.8), (-1, -0.8),
                 (0, 1.8), (0, -1.8), (1.2, 1.6), (-1.2, 1.6), (1.2, -1.6), (-1.2, -1.6)]
LABEL_ASPECT = 5  # a short title at 13 px is about five times wider than tall


@memoize(2)
def mean_ratings(state: AppState) -> dict[str, float]:
    """Mean rating (1-5) of each item's training interactions: what "liked by many" looks like."""
    inter = state.dataset.interactions
    return inter[inter["split"] == "train"].groupby("item")["rating"].mean().astype(float).to_dict()


def candidate_labels(xy: list[tuple[float, float]], titles: list[str], bounds: tuple[float, float, float, float],
                     size: tuple[int, int] = (1100, 540), focus: int | None = None) -> list[dict]:
    """Plotly annotations naming candidates without stacking the names: each gets the free
    direction (see ``views.spread_labels``, in approximate screen pixels) and an arrow back."""
    x0, x1, y0, y1 = bounds
    px = [((x - x0) / max(x1 - x0, 1e-9) * size[0], (y - y0) / max(y1 - y0, 1e-9) * size[1]) for x, y in xy]
    offsets = [(dx * LABEL_PX * 1.6, dy * LABEL_PX) for dx, dy in LABEL_OFFSETS]
    chosen = spread_labels(px, offsets, aspect=LABEL_ASPECT)
    out = []
    for n, ((x, y), title, j) in enumerate(zip(xy, titles, chosen)):
        dx, dy = offsets[j]
        out.append(dict(x=x, y=y, text=f"<b>{title}</b>" if n == focus else title, showarrow=True, arrowhead=0,
                        arrowwidth=1.2, arrowcolor=CANDIDATE_COLOUR, ax=dx, ay=-dy, standoff=7,
                        bgcolor="rgba(255,255,255,0.88)", bordercolor=CANDIDATE_COLOUR if n == focus else "#ADB5BD",
                        borderwidth=1.5 if n == focus else 1, borderpad=2, font=dict(size=13, color="#1a1a1a")))
    return out


def map_figure(state: AppState, result: ScoredResult | None, color_by: str = "rating", show_words: bool = True,
               focus: str | None = None) -> tuple[go.Figure, str]:
    """The scatter with the current user and candidates highlighted (the best few named), plus a caption."""
    cf = result.cf if result else None
    why = core.map_unavailable(state, cf)
    if why:
        return empty_figure(why), why
    pipe = state.pipeline(cf)
    layout = state.assets.layout(pipe.cf_name)
    fig = go.Figure(layout_traces(layout["points"], color_by, show_words,
                                  mean_rating=mean_ratings(state) if color_by == "rating" else None))
    profile = core.profile_of(state, result)
    user_xy, how = core.user_position(state, profile, cf)
    labelled = _mark_candidates(state, fig, result, layout, user_xy, focus) if result and result.items else []
    fig.add_trace(go.Scatter(
        x=[user_xy[0]], y=[user_xy[1]], mode="markers", name=f"{profile.describe()}",
        marker=dict(size=24, symbol="star", color="#E64980", line=dict(width=1.5, color="#1a1a1a")),
        text=[f"{profile.describe()}: {how}"], hovertemplate="%{text}<extra></extra>"))
    # No width: the figure fills its container (Gradio's plots are responsive; see RESIZE_PLOTS_JS).
    fig.update_layout(
        height=MAP_HEIGHT, template="plotly_white", margin=dict(l=10, r=10, t=40, b=10),
        title=dict(text=f"Mapped {cf_label(pipe)} tokens and word embeddings (UMAP, cosine)",
                   font_size=16),
        legend=dict(orientation="h", y=-0.02, x=0, yanchor="top", font_size=14, itemsizing="constant"),
        dragmode="pan", hoverlabel_font_size=13,
        xaxis=dict(showticklabels=False, title=None, zeroline=False),
        yaxis=dict(showticklabels=False, title=None, zeroline=False))
    return fig, map_caption(state, layout.get("meta", {}), color_by, f"{profile.describe()}: {how}", bool(labelled))


def _mark_candidates(state: AppState, fig: go.Figure, result: ScoredResult, layout: dict,
                     user_xy: tuple[float, float], focus: str | None) -> list[str]:
    """Ring every candidate of ``result`` on ``fig`` and name the best few (and the inspected
    ``focus``) without stacking the names; the candidates named."""
    candidates = result.items
    xy, was_placed = core.item_positions(state, candidates, result.cf)
    titles = {r.item: r.title for r in result.rows}
    fig.add_trace(go.Scatter(
        x=[p[0] for p in xy], y=[p[1] for p in xy], mode="markers", name="candidates",
        marker=dict(size=16, color="rgba(0,0,0,0)", line=dict(width=3, color=CANDIDATE_COLOUR)),
        text=[f"<b>{titles[i]}</b> · #{i}" + (" (placed: not in the layout)" if pl else "")
              for i, pl in zip(candidates, was_placed)],
        hovertemplate="%{text}<extra>candidate</extra>"))
    # The best few in the active ranking (the dropdown's order), and the inspected one.
    order = [item for _, item in focus_choices(result)[0]]
    labelled = order[:LABELLED] + ([focus] if focus in candidates and focus not in order[:LABELLED] else [])
    # name the inspected candidate first: it gets the freest spot
    labelled.sort(key=lambda i: i != focus)
    pos = {i: xy[candidates.index(i)] for i in labelled}
    xs = [p["x"] for p in layout["points"]] + [user_xy[0]]
    ys = [p["y"] for p in layout["points"]] + [user_xy[1]]
    for note in candidate_labels([pos[i] for i in labelled], [shorten(titles[i], 22) for i in labelled],
                                 (min(xs), max(xs), min(ys), max(ys)),
                                 focus=labelled.index(focus) if focus in labelled else None):
        fig.add_annotation(**note)
    return labelled


def map_caption(state: AppState, meta: dict, color_by: str, user: str, named: bool) -> str:
    """What the map shows and how it was made (``meta``: the layout's record); ``user``: the ★'s
    account of itself; ``named``: whether candidates are named on the map."""
    counts = meta.get("counts", {})
    caption = (f"Each dot is a token vector as the LLM would receive it. The layout was fitted once "
               f"(UMAP, cosine metric, seed {meta.get('seed', '?')}) on {counts.get('item', '?')} "
               f"mapped item tokens, {counts.get('user', '?')} mapped user tokens and "
               f"{counts.get('word', '?')} sampled word embeddings; distances are only roughly "
               f"meaningful. {COLOUR_NOTE.get(color_by, '')}The ★ is {user}. Red rings are "
               f"the candidates{'; the best few in the current ranking are named' if named else ''}. "
               "Mapped tokens that form their own islands away from the green words are normal: CoLLM only needs "
               "the LLM to read them, not to make them word-like. Scroll to zoom, drag to pan, click legend "
               "entries to hide groups.")
    if meta.get("llm") and meta.get("llm") != state.pipeline().llm.name:
        caption += f" ⚠️ The layout was computed for {meta['llm']}, not the running {state.pipeline().llm.name}."
    return caption


def token_report(state: AppState, result: ScoredResult | None, focus: str | None, k: int = 8
                 ) -> tuple[pd.DataFrame, str]:
    """Nearest vocabulary tokens of the two CF tokens, and their norms vs words."""
    pipe = state.pipeline(result.cf if result else None)
    if not pipe.has_projector:
        return pd.DataFrame(), "No projector loaded: there are no mapped CF tokens."
    profile = core.profile_of(state, result)
    if focus is None and result:
        focus = result.rows[0].item
    focus = focus or state.catalog.item_ids[0]
    tokens, near = core.nearest(state, profile, focus, pipe.cf_name, k)
    rows = []
    for n in range(k):
        rows.append([n + 1, f"“{near[0][n][0]}”", round(near[0][n][1], 3), f"“{near[1][n][0]}”",
                     round(near[1][n][1], 3)])
    title = state.dataset.title(focus)
    frame = pd.DataFrame(rows, columns=["#", f"nearest to the user token ({profile.describe()})", "cosine",
                                        f"nearest to the item token ({shorten(title, 24)})", "cosine "])
    norms = np.linalg.norm(tokens, axis=1)
    wn = core.word_norm(state, pipe.cf_name)
    ratio = float(norms.mean() / wn) if wn else float("nan")
    size = ("much longer than" if ratio > 2 else "longer than" if ratio > 1.2 else
            "about as long as" if ratio > 0.8 else "shorter than")
    best = max(near[0][0][1], near[1][0][1])
    text = (f"**Norms.** User token {norms[0]:.2f}, item token {norms[1]:.2f}; a typical word embedding has "
            f"norm {wn:.2f} (vocabulary mean). The mapped tokens are {size} ordinary words (×{ratio:.1f}) and "
            f"their closest words reach a cosine of only {best:.2f}, so the LLM does not read them as any "
            "existing word: they are new “soft words” whose meaning the projector learned to encode and the "
            "frozen LLM (with its LoRA) learned to use.")
    return frame, text


NEAREST_CAUTION = ("A cosine of about 0.2 is weak: these are merely the closest of tens of thousands of "
                   "words, not what the token means. The **Inside the LLM** tab's logit lens (what the model "
                   "itself reads at each layer) says more.")


@dataclass(frozen=True)
class EmbeddingTab(Tab):
    """The map of the current result's user and candidates among the LLM's word embeddings."""

    color_by: gr.Radio
    show_words: gr.Checkbox
    focus: gr.Dropdown  # the candidate whose two CF tokens the word lists are about
    map: gr.Plot
    caption: gr.Markdown
    norms: gr.Markdown
    nearest: gr.Dataframe

    @property
    def outputs(self) -> list:
        return [self.map, self.caption, self.nearest, self.norms]

    def after_scoring(self, page: Page) -> Refresh:
        """After every scoring: the candidate list, and the map of the new result."""
        import gradio as gr

        state = page.state

        def after_score(result, color_by, show_words):
            choices, value = focus_choices(result)
            return (gr.update(choices=choices, value=value),) + redraw(state, result, color_by, show_words, value)
        return Refresh(after_score, [page.result, self.color_by, self.show_words], [self.focus] + self.outputs)

    def wire(self, page: Page) -> None:
        state = page.state

        def refresh(result, color_by, show_words, focus):
            return redraw(state, result, color_by, show_words, focus)

        for event in (self.color_by.input, self.show_words.input, self.focus.input):
            event(refresh, [page.result, self.color_by, self.show_words, self.focus], self.outputs)


def redraw(state: AppState, result: ScoredResult | None, color_by: str, show_words: bool, focus: str | None
           ) -> tuple:
    """The map, its caption and the word lists (``EmbeddingTab.outputs`` order)."""
    fig, caption = map_figure(state, result, color_by, show_words, focus)
    frame, text = token_report(state, result, focus)
    return fig, caption, frame, text


def build(state: AppState) -> EmbeddingTab:
    import gradio as gr

    gr.Markdown("Where do the CF tokens sit among the LLM's own word embeddings? Each mapped token is the "
                "projector's output for one user or item; the plot squeezes those 576-dimensional vectors, "
                "together with a sample of real word embeddings, into two dimensions.", elem_classes=["lead"])
    with gr.Row():
        color_by = gr.Radio(COLOR_CHOICES, value=COLOR_CHOICES[0][1], label="Colour items by", scale=2,
                            min_width=360, elem_id="map-colour")  # wide: the three choices on one line
        show_words = gr.Checkbox(True, label="Show vocabulary words", min_width=200)
        focus = gr.Dropdown([], label="Candidate to inspect", min_width=240, elem_id="map-candidate")
    # No label badge: it would sit on the figure's title (and Gradio then adds a 100 px top margin).
    fig = gr.Plot(empty_figure("Score candidates in the Recommend tab (or wait for the first load).",
                               height=MAP_HEIGHT), show_label=False, elem_id="embedding-map")
    caption = gr.Markdown(elem_classes=["note"])
    # Collapsed on purpose: word lists with cosines around 0.2 invite reading meaning into the tokens.
    with gr.Accordion("Nearest vocabulary words of the two CF tokens (a weak signal: read with care)", open=False,
                      elem_id="nearest-fold"):
        gr.Markdown(NEAREST_CAUTION, elem_classes=["note"])
        norms = gr.Markdown(elem_classes=["note"])
        nearest = gr.Dataframe(interactive=False, label="Nearest vocabulary tokens by cosine similarity",
                               elem_id="nearest-words")
    return EmbeddingTab(color_by=color_by, show_words=show_words, focus=focus, map=fig, caption=caption, norms=norms,
                        nearest=nearest)
