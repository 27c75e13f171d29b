"""Embedding space tab: where the CF tokens land among the LLM's word embeddings.

The 2-D layout is a UMAP computed once by ``python -m collm_demo embedding-map``
(jointly on mapped item tokens, mapped user tokens and a sample of word embeddings).
Vectors that were not in that fit (a composed or folded-in user, an item refit in the
cold-start simulator) are placed with ``embedding_map.place``: at the similarity-weighted
mean position of their 10 nearest fitted points. The app labels such points "placed".
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from . import core
from .state import AppState
from .values import ScoredResult, focus_choices
from .views import CANDIDATE_COLOUR, cf_label, empty_figure, layout_traces, shorten

COLOR_CHOICES = [("warm / cold item", "warm"), ("genre (first listed)", "genre")]
MAP_HEIGHT = 620


def map_figure(state: AppState, result: ScoredResult | None, color_by: str = "warm", show_words: bool = True,
               focus: str | None = None) -> tuple[go.Figure, str]:
    """The scatter with the current user and candidates highlighted, plus a caption."""
    cf = result.cf if result else None
    why = core.map_unavailable(state, cf)
    if why:
        return empty_figure(why), why
    pipe = state.pipeline(cf)
    layout = state.assets.layout(pipe.cf_name)
    fig = go.Figure(layout_traces(layout["points"], color_by, show_words))
    profile = core.profile_of(state, result)
    (ux, uy), how = core.user_position(state, profile, cf)
    candidates = result.items if result else []
    if candidates:
        xy, was_placed = core.item_positions(state, candidates, cf)
        titles = {r.item: r.title for r in result.rows}
        fig.add_trace(go.Scatter(
            x=[p[0] for p in xy], y=[p[1] for p in xy], mode="markers", name="candidates",
            marker=dict(size=13, color="rgba(0,0,0,0)", line=dict(width=2.5, color=CANDIDATE_COLOUR)),
            text=[f"<b>{titles[i]}</b> · #{i}" + (" (placed: not in the layout)" if pl else "")
                  for i, pl in zip(candidates, was_placed)],
            hovertemplate="%{text}<extra>candidate</extra>"))
        if focus in candidates:
            fx, fy = xy[candidates.index(focus)]
            fig.add_annotation(x=fx, y=fy, text=shorten(titles[focus], 30), showarrow=True, arrowhead=2,
                               ax=30, ay=-30, bgcolor="rgba(255,255,255,0.85)", font=dict(size=12))
    fig.add_trace(go.Scatter(
        x=[ux], y=[uy], mode="markers", name=f"{profile.describe()}",
        marker=dict(size=20, symbol="star", color="#E64980", line=dict(width=1.5, color="#1a1a1a")),
        text=[f"{profile.describe()}: {how}"], hovertemplate="%{text}<extra></extra>"))
    fig.update_layout(
        height=MAP_HEIGHT, template="plotly_white", margin=dict(l=10, r=10, t=40, b=10),
        title=dict(text=f"Mapped {cf_label(pipe)} tokens and word embeddings (UMAP, cosine)",
                   font_size=14),
        legend=dict(orientation="h", y=-0.06, x=0, font_size=11), dragmode="pan",
        xaxis=dict(showticklabels=False, title=None, zeroline=False),
        yaxis=dict(showticklabels=False, title=None, zeroline=False))
    meta = layout.get("meta", {})
    caption = (f"Each dot is a token vector as the LLM would receive it. The layout was fitted once "
               f"(UMAP, cosine metric, seed {meta.get('seed', '?')}) on {meta.get('counts', {}).get('item', '?')} "
               f"mapped item tokens, {meta.get('counts', {}).get('user', '?')} mapped user tokens and "
               f"{meta.get('counts', {}).get('word', '?')} sampled word embeddings; distances are only roughly "
               f"meaningful. The ★ is {profile.describe()}: {how}. Red rings are the candidates. "
               "Mapped tokens that form their own islands away from the green words are normal: CoLLM only needs "
               "the LLM to read them, not to make them word-like. Scroll to zoom, drag to pan, click legend "
               "entries to hide groups.")
    if meta.get("llm") and meta.get("llm") != state.pipeline().llm.name:
        caption += f" ⚠️ The layout was computed for {meta['llm']}, not the running {state.pipeline().llm.name}."
    return fig, caption


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


def build(state: AppState):
    import gradio as gr

    w: dict = {}
    gr.Markdown("Where do the CF tokens sit among the LLM's own word embeddings? Each mapped token is the "
                "projector's output for one user or item; the plot squeezes those 576-dimensional vectors, "
                "together with a sample of real word embeddings, into two dimensions.", elem_classes=["lead"])
    with gr.Row():
        w["color_by"] = gr.Radio(COLOR_CHOICES, value="warm", label="Colour items by", min_width=240)
        w["show_words"] = gr.Checkbox(True, label="Show vocabulary words", min_width=200)
        w["focus"] = gr.Dropdown([], label="Candidate to inspect", min_width=240, elem_id="map-candidate")
    w["map"] = gr.Plot(empty_figure("Score candidates in the Recommend tab (or wait for the first load)."),
                       label="Embedding map", elem_id="embedding-map")
    w["caption"] = gr.Markdown(elem_classes=["note"])
    gr.Markdown("### What do the two CF tokens look like to the LLM?")
    w["norms"] = gr.Markdown()
    w["nearest"] = gr.Dataframe(interactive=False, label="Nearest vocabulary tokens by cosine similarity",
                                elem_id="nearest-words")
    return w


def wire(state: AppState, w: dict, result_state):
    import gradio as gr

    def refresh(result, color_by, show_words, focus):
        fig, caption = map_figure(state, result, color_by, show_words, focus)
        frame, text = token_report(state, result, focus)
        return fig, caption, frame, text

    def after_score(result, color_by, show_words):
        choices, value = focus_choices(result)
        fig, caption, frame, text = refresh(result, color_by, show_words, value)
        return gr.update(choices=choices, value=value), fig, caption, frame, text

    outs = [w["map"], w["caption"], w["nearest"], w["norms"]]
    for event in (w["color_by"].input, w["show_words"].input, w["focus"].input):
        event(refresh, [result_state, w["color_by"], w["show_words"], w["focus"]], outs)
    return after_score, [result_state, w["color_by"], w["show_words"]], [w["focus"]] + outs
