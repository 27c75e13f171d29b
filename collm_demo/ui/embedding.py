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
import plotly.colors as pc
import plotly.graph_objects as go

from ..embedding_map import nearest_words, place
from . import core
from .core import Profile
from .state import AppState

COLOR_CHOICES = [("warm / cold item", "warm"), ("genre (first listed)", "genre")]
MAP_HEIGHT = 620


def _empty(message: str, height: int = 360) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font=dict(size=14))
    fig.update_layout(height=height, xaxis_visible=False, yaxis_visible=False, template="plotly_white",
                      margin=dict(l=10, r=10, t=30, b=10))
    return fig


def unavailable(state: AppState, cf: str | None = None) -> str | None:
    """Why the map of backend ``cf`` cannot be shown, or None."""
    pipe = state.pipeline(cf)
    if not pipe.has_projector:
        return "The embedding map needs a CF model and a trained projector (none loaded)."
    if state.layout(cf) is None:
        flag = "" if pipe.cf_name == "mf" else f" --cf {pipe.cf_name}"
        return (f"No embedding-map layout for the {core.cf_name(pipe)} tokens at {state.layout_path(cf)}. "
                f"Compute it once with `python -m collm_demo embedding-map{flag}` (about a minute), then "
                "reload the app.")
    return None


def layout_index(state: AppState, cf: str | None = None) -> dict:
    """Positions by (kind, key) for quick look-ups (cached)."""
    def make():
        return {(p["kind"], p["key"]): (p["x"], p["y"]) for p in state.layout(cf)["points"]}
    return state.cache("layout_index", 8).get_or(id(state.layout(cf)), make)


def placed(state: AppState, tokens: np.ndarray, key, cf: str | None = None) -> np.ndarray:
    """``embedding_map.place`` with a cache (it compares against every fitted point)."""
    pipe = state.pipeline(cf)
    return state.cache("placed", 256).get_or((pipe.cf_name,) + tuple(key),
                                             lambda: place(pipe, state.layout(cf), tokens))


def profile_of(state: AppState, result: dict | None) -> Profile:
    if result:
        return Profile.from_dict(result["profile"])
    return core.real_profile(state, state.default_user())


def user_position(state: AppState, profile: Profile, cf: str | None = None) -> tuple[tuple[float, float], str]:
    """The user's map position and how it was obtained."""
    index = layout_index(state, cf)
    # SASRec's vector for a profile is its history's encoding, not the stored one in the layout.
    stored = getattr(state.pipeline(cf).cf, "kind", "") != "sasrec"
    if profile.kind == "user" and ("user", profile.user) in index and stored:
        return index[("user", profile.user)], "fitted in the layout (trained vector)"
    vec, _ = core.user_vector(state, profile, cf, for_tokens=True)
    xy = placed(state, state.project(vec, cf), ("user",) + profile.key(), cf)[0]
    return (float(xy[0]), float(xy[1])), ("placed (approximate): not in the fitted layout, so drawn at the "
                                          "similarity-weighted mean position of its 10 nearest fitted points")


def item_positions(state: AppState, items: list[str], cf: str | None = None) -> tuple[list[tuple[float, float]], list[bool]]:
    index = layout_index(state, cf)
    out, was_placed = [], []
    missing = [i for i in items if ("item", i) not in index]
    if missing:
        vectors = state.pipeline(cf).cf.item_vectors(missing)
        xy = placed(state, state.project(vectors, cf), ("items",) + tuple(missing), cf)
        extra = {i: (float(x), float(y)) for i, (x, y) in zip(missing, xy)}
    for item in items:
        if ("item", item) in index:
            out.append(index[("item", item)])
            was_placed.append(False)
        else:
            out.append(extra[item])
            was_placed.append(True)
    return out, was_placed


def base_traces(state: AppState, color_by: str = "warm", show_words: bool = True,
                faint: bool = False, cf: str | None = None) -> list[go.BaseTraceType]:
    """The fitted layout of backend ``cf``: items (coloured), users, words."""
    points = state.layout(cf)["points"]
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
        groups = [("warm items", "#4C6EF5", [p for p in items if p["warm"]]),
                  ("cold items", "#F08C00", [p for p in items if not p["warm"]])]
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


def map_figure(state: AppState, result: dict | None, color_by: str = "warm", show_words: bool = True,
               focus: str | None = None) -> tuple[go.Figure, str]:
    """The scatter with the current user and candidates highlighted, plus a caption."""
    cf = core.result_cf(result)
    why = unavailable(state, cf)
    if why:
        return _empty(why), why
    fig = go.Figure(base_traces(state, color_by, show_words, cf=cf))
    profile = profile_of(state, result)
    (ux, uy), how = user_position(state, profile, cf)
    candidates = [r["item"] for r in result["rows"]] if result else []
    if candidates:
        xy, was_placed = item_positions(state, candidates, cf)
        titles = {r["item"]: r["title"] for r in result["rows"]}
        fig.add_trace(go.Scatter(
            x=[p[0] for p in xy], y=[p[1] for p in xy], mode="markers", name="candidates",
            marker=dict(size=13, color="rgba(0,0,0,0)", line=dict(width=2.5, color="#C92A2A")),
            text=[f"<b>{titles[i]}</b> · #{i}" + (" (placed: not in the layout)" if pl else "")
                  for i, pl in zip(candidates, was_placed)],
            hovertemplate="%{text}<extra>candidate</extra>"))
        if focus in candidates:
            fx, fy = xy[candidates.index(focus)]
            fig.add_annotation(x=fx, y=fy, text=core_short(titles[focus]), showarrow=True, arrowhead=2,
                               ax=30, ay=-30, bgcolor="rgba(255,255,255,0.85)", font=dict(size=12))
    fig.add_trace(go.Scatter(
        x=[ux], y=[uy], mode="markers", name=f"{profile.describe()}",
        marker=dict(size=20, symbol="star", color="#E64980", line=dict(width=1.5, color="#1a1a1a")),
        text=[f"{profile.describe()}: {how}"], hovertemplate="%{text}<extra></extra>"))
    fig.update_layout(
        height=MAP_HEIGHT, template="plotly_white", margin=dict(l=10, r=10, t=40, b=10),
        title=dict(text=f"Mapped {core.cf_name(state.pipeline(cf))} tokens and word embeddings (UMAP, cosine)",
                   font_size=14),
        legend=dict(orientation="h", y=-0.06, x=0, font_size=11), dragmode="pan",
        xaxis=dict(showticklabels=False, title=None, zeroline=False),
        yaxis=dict(showticklabels=False, title=None, zeroline=False))
    meta = state.layout(cf).get("meta", {})
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


def core_short(text: str, n: int = 30) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def word_norm(state: AppState, cf: str | None = None) -> float:
    layout = state.layout(cf) or {}
    norms = layout.get("meta", {}).get("norms", {})
    if "word_norm_mean" in norms:
        return float(norms["word_norm_mean"])
    state.word_unit()
    return state.word_norm_mean


def token_report(state: AppState, result: dict | None, focus: str | None, k: int = 8) -> tuple[pd.DataFrame, str]:
    """Nearest vocabulary tokens of the two CF tokens, and their norms vs words."""
    cf = core.result_cf(result)
    pipe = state.pipeline(cf)
    if not pipe.has_projector:
        return pd.DataFrame(), "No projector loaded: there are no mapped CF tokens."
    profile = profile_of(state, result)
    if focus is None and result:
        focus = result["rows"][0]["item"]
    focus = focus or state.item_ids[0]
    uvec, _ = core.user_vector(state, profile, cf, for_tokens=True)
    tokens = state.project(np.stack([uvec.numpy(), pipe.cf.item_vectors([focus])[0].numpy()]), cf)
    near = state.cache("nearest", 256).get_or(("near", pipe.cf_name) + profile.key() + (focus,),
                                              lambda: nearest_words(pipe, tokens, k))
    rows = []
    for n in range(k):
        rows.append([n + 1, f"“{near[0][n][0]}”", round(near[0][n][1], 3), f"“{near[1][n][0]}”",
                     round(near[1][n][1], 3)])
    title = state.dataset.title(focus)
    frame = pd.DataFrame(rows, columns=["#", f"nearest to the user token ({profile.describe()})", "cosine",
                                        f"nearest to the item token ({core_short(title, 24)})", "cosine "])
    norms = np.linalg.norm(tokens, axis=1)
    wn = word_norm(state, cf)
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
    w["map"] = gr.Plot(_empty("Score candidates in the Recommend tab (or wait for the first load)."),
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
        from .recommend import focus_choices

        choices, value = focus_choices(result)
        fig, caption, frame, text = refresh(result, color_by, show_words, value)
        return gr.update(choices=choices, value=value), fig, caption, frame, text

    outs = [w["map"], w["caption"], w["nearest"], w["norms"]]
    for event in (w["color_by"].input, w["show_words"].input, w["focus"].input):
        event(refresh, [result_state, w["color_by"], w["show_words"], w["focus"]], outs)
    return after_score, [result_state, w["color_by"], w["show_words"]], [w["focus"]] + outs
