"""How it works tab: one candidate of the current selection, followed through the model.

Step 1 CF vectors → step 2 projector → step 3 where the tokens enter the sequence →
step 4 the LLM's Yes/No logits → step 5 the score and the ranking. Every number is live.
``explain`` gathers them in a :class:`Walkthrough`, one render function per step.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..errors import InputError
from ..pipeline import Pipeline
from . import core
from .page import Page, Refresh, Tab, gr_error
from .state import AppState
from .values import Profile, ScoredResult, focus_choices, ranks
from .views import COLD_COLOUR, WARM_COLOUR, cf_label, shorten

if TYPE_CHECKING:
    import gradio as gr

    from ..collm import Inspection

SHOW_DIMS = 5
STEP4_HEIGHT = 400
# The walkthrough's parts shown on the tab, in the tab's order (``Walkthrough`` and ``ExplainTab`` fields).
OUTPUT_KEYS = ("step1_md", "step1_table", "step2_md", "step2_table", "step3_md", "step3_html",
               "step4_md", "step4_table", "step4_fig", "step5_md")


@dataclass(frozen=True)
class Walkthrough:
    """One candidate followed through the model: each step's words and its table, tokens or figure."""

    item: str
    title: str
    step1_md: str  # the CF vectors
    step1_table: pd.DataFrame
    step2_md: str  # the projector
    step2_table: pd.DataFrame
    step3_md: str  # the token sequence
    step3_html: str
    step4_md: str  # the Yes / No answer
    step4_table: pd.DataFrame
    step4_fig: go.Figure
    step5_md: str  # the ranking

    def outputs(self) -> list:
        """The values of the tab's step components, in ``OUTPUT_KEYS`` order."""
        return [getattr(self, key) for key in OUTPUT_KEYS]


def explain(state: AppState, result: ScoredResult | None, item: str | None) -> Walkthrough:
    """All numbers for the walkthrough, as plain values (tables, figures, markdown); the CF
    backend is the one the result was scored with."""
    pipe = state.pipeline(result.cf if result else None)
    profile = core.profile_of(state, result)
    if not profile.items:
        raise InputError("The current history is empty; add movies in the Recommend tab first.")
    rows = result.rows if result else ()
    item = item or (rows[0].item if rows else state.catalog.item_ids[0])
    title = state.dataset.title(item)
    step1_md, step1_table = vectors_step(state, pipe, profile, item, title)
    step2_md, step2_table = projector_step(state, pipe, profile, item)
    step3_md, step3_html = sequence_step(pipe, profile, item)
    step4_md, step4_table, step4_fig = answer_step(state, pipe, profile, item, title)
    return Walkthrough(item=item, title=title, step1_md=step1_md, step1_table=step1_table, step2_md=step2_md,
                       step2_table=step2_table, step3_md=step3_md, step3_html=step3_html, step4_md=step4_md,
                       step4_table=step4_table, step4_fig=step4_fig, step5_md=ranking_step(result, item))


# ---------------------------------------------------------------- step 1: CF vectors

def _vec_row(name: str, source: str, vec) -> list:
    values = vec.tolist()
    return ([name, source, len(values), round(float(np.linalg.norm(values)), 3)]
            + [round(v, 3) for v in values[:SHOW_DIMS]] + ["…"])


def vectors_step(state: AppState, pipe: Pipeline, profile: Profile, item: str, title: str
                 ) -> tuple[str, pd.DataFrame]:
    """Step 1: the user's and the item's CF vectors, and the CF model's own prediction from them."""
    if pipe.cf is None:
        return "**Step 1 · The CF vectors.** No CF model is loaded, so there are none.", pd.DataFrame()
    cf = pipe.cf_name
    uvec, source = core.user_vector(state, profile, cf, for_tokens=True)
    cf_uvec, _ = core.user_vector(state, profile, cf)  # what the CF model alone scores with
    ivec = pipe.cf.item_vectors([item])[0]
    name = cf_label(pipe)
    isource = (f"trained {name} vector" if pipe.cf.has_item(item) else
               "no training interactions: the default “no information” vector")
    cols = ["vector", "where it comes from", "dims", "norm"] + [f"d{n}" for n in range(SHOW_DIMS)] + ["…"]
    table = pd.DataFrame([_vec_row(profile.describe(), source.split(" — ")[0], uvec),
                          _vec_row(f"{title} (#{item})", isource, ivec)], columns=cols)
    mf = float(pipe.cf.score_vectors(cf_uvec.view(1, -1), ivec.view(1, -1))[0])
    differs = not torch.equal(uvec, cf_uvec)
    spec = pipe.backend
    extra = f"; {spec.vector_note}" if spec.vector_note else ""
    text = (
        f"**Step 1 · The CF vectors.** The collaborative-filtering model ({name}) {spec.blurb}; here "
        f"{len(uvec)} numbers each (the first {SHOW_DIMS} are shown{extra}). Their dot "
        f"product is the CF model's own prediction: sigmoid(user · item + global bias) = **{mf:.3f}** that "
        "the user likes the movie. CoLLM does not use that "
        "number; it hands the vectors themselves to the LLM."
        + (f" (This user is folded in, and the two uses fold in differently: the CF model alone pulls "
           f"the fit towards the no-information vector with strength {pipe.cf.foldin_l2:g}, tuned for its "
           f"own score; the vector shown, handed to the projector, uses {pipe.token_foldin_l2():g}, the "
           "strength the projector was trained on.)" if differs else ""))
    return text, table


# ----------------------------------------------------------------- step 2: projector

def projector_step(state: AppState, pipe: Pipeline, profile: Profile, item: str) -> tuple[str, pd.DataFrame]:
    """Step 2: the two mapped tokens' norms against a word's, and their nearest words."""
    if not pipe.has_projector:
        return "**Step 2 · The projector.** No projector is loaded (text-only mode).", pd.DataFrame()
    tokens, near = core.nearest(state, profile, item, pipe.cf_name)
    wn = core.word_norm(state, pipe.cf_name)
    norms = np.linalg.norm(tokens, axis=1)
    table = pd.DataFrame(
        [[name, round(float(norms[n]), 2), round(wn, 2), round(float(norms[n] / wn), 1),
          ", ".join(f"“{w.strip() or w}” {c:.2f}" for w, c in near[n][:5])]
         for n, name in enumerate(("user token", "item token"))],
        columns=["mapped token", "norm", "typical word norm", "ratio", "nearest words (cosine)"])
    cf_dim, width, out_dim = pipe.projector_shape
    text = (
        f"**Step 2 · The projector.** A small network (Linear {cf_dim}→{width}, ReLU, "
        f"Linear {width}→{out_dim}) turns each CF vector into one {out_dim}-number "
        "vector of the same kind as a word embedding: a *soft token*. It is the only part trained in stage 2"
        + (f" (this one {pipe.projector_training})" if pipe.projector_training else "") + ". "
        + ("Here users have a network of their own, items another (beyond the paper, which shares one). "
           if pipe.separate_user_projector else "")
        + ("Its outputs are not close to any real word (cosines below), so they act as new words the LLM "
           "learned to read." if max(near[0][0][1], near[1][0][1]) < 0.5 else
           "Its outputs lie fairly close to some real words (cosines below)."))
    return text, table


# ------------------------------------------------------------ step 3: token sequence

def sequence_step(pipe: Pipeline, profile: Profile, item: str) -> tuple[str, str]:
    """Step 3: the prompt's tokens as chips, the two CF slots (when there are any) marked."""
    with_cf = pipe.has_projector
    prompt = pipe.prompt_tokens(profile.items, profile.labels, item, with_cf)
    slots = {prompt.user_slot: "user", prompt.item_slot: "item"} if with_cf else {}
    chips = []
    for pos, (tid, piece) in enumerate(zip(prompt.ids, prompt.pieces)):
        kind = slots.get(pos)
        if kind:
            label = "&lt;UserID&gt;" if kind == "user" else "&lt;ItemID&gt;"
            chips.append(f'<span class="tok tok-{kind}" title="position {pos}: overwritten by the projected '
                         f'{kind} CF vector"><sub>{pos}</sub>{label}</span>')
        else:
            text = html.escape(piece).replace(" ", "·").replace("\n", "↵")
            cls = "tok tok-prefix" if pos < prompt.prefix_len else "tok tok-suffix"
            chips.append(f'<span class="{cls}" title="position {pos}, token id {tid}"><sub>{pos}</sub>{text}</span>')
    if not with_cf:
        return (f"**Step 3 · The token sequence.** The text-only prompt is {len(prompt.ids)} tokens; "
                "there are no CF slots."), f'<div class="tokens">{"".join(chips)}</div>'
    text = (
        f"**Step 3 · Into the token sequence.** The CoLLM prompt is {len(prompt.ids)} tokens. The user slot is "
        f"position **{prompt.user_slot}** and the item slot position **{prompt.item_slot}**. "
        "The LLM never sees the placeholder's own embedding: it is replaced by the soft token before the "
        f"first layer. Grey tokens (0–{prompt.prefix_len - 1}) are the *prefix* shared by every candidate of "
        "this user; the app runs it once and reuses its cache for all candidates, then runs only the white "
        "*suffix* tokens per candidate.")
    return text, f'<div class="tokens">{"".join(chips)}</div>'


# ---------------------------------------------------------------- step 4: Yes / No

ANSWER_MD = (
    "**Step 4 · The answer.** The LLM reads the sequence and predicts the next token after “#Answer:”. "
    "Only two entries of that prediction matter: the logits (unnormalised scores) of “Yes” and “No”. "
    "The score is P(Yes) when the choice is restricted to those two: sigmoid(logit Yes − logit No). "
    "Whether “Yes” or “No” is the single most likely next token does not matter (the last column shows "
    "what the model would actually write next); only their difference does.")


def answer_step(state: AppState, pipe: Pipeline, profile: Profile, item: str, title: str
                ) -> tuple[str, pd.DataFrame, go.Figure]:
    """Step 4: the Yes / No logits of the prompt without and (with a projector) with CF tokens."""
    answers = {"text": core.answer_logits(state, profile, item, False, pipe.cf_name)}
    if pipe.has_projector:
        answers["cf"] = core.answer_logits(state, profile, item, True, pipe.cf_name)
    text_name, cf_mode = core.mode_names(pipe)
    table = [[name, round(a.yes_logit, 3), round(a.no_logit, 3), round(a.diff, 3), round(a.score, 4),
              ", ".join(f"“{w}” {p:.2f}" for w, p in a.top[:4])]
             for key, name in (("text", f"without CF — {text_name}"), ("cf", f"with CF — {cf_mode}"))
             if (a := answers.get(key)) is not None]
    frame = pd.DataFrame(table, columns=["mode", "logit “Yes”", "logit “No”", "Yes − No",
                                         "score = sigmoid(Yes − No)", "most likely next tokens"])
    return ANSWER_MD, frame, answer_figure(answers, title)


def _headroom(values: list[float], share: float = 0.3, minimum: float = 0.5) -> list[float]:
    """A y range over 0 and ``values`` with room beyond the largest bar, either side, for its label."""
    low, high = min(0.0, min(values)), max(0.0, max(values))
    pad = max(minimum, share * max(abs(low), abs(high)))
    return [low - pad if low < 0 else low, high + pad if high > 0 else high + pad * 0.2]


def answer_figure(answers: dict[str, Inspection], title: str) -> go.Figure:
    """The logits of “Yes” and “No” per mode (left) and their difference → the score (right)."""
    fig = make_subplots(1, 2, column_widths=[0.6, 0.4], horizontal_spacing=0.12,
                        subplot_titles=("logits of “Yes” and “No”", "Yes − No → score"))
    for key, name, color in (("text", "without CF", COLD_COLOUR), ("cf", "with CF", WARM_COLOUR)):
        if key in answers:
            a = answers[key]
            fig.add_trace(go.Bar(x=["logit “Yes”", "logit “No”"], y=[a.yes_logit, a.no_logit], name=name,
                                 marker_color=color, text=[f"{v:.2f}" for v in (a.yes_logit, a.no_logit)],
                                 textposition="outside", legendgroup=key), 1, 1)
            fig.add_trace(go.Bar(x=[name], y=[a.diff], marker_color=color, showlegend=False, legendgroup=key,
                                 text=[f"{a.diff:+.2f} → {a.score:.3f}"], textposition="outside"), 1, 2)
    fig.add_hline(y=0, line_color="#555", line_width=1, row=1, col=2)
    # Both y ranges leave headroom above (and below) the bars for their "outside" value labels, so
    # a label never reaches the subplot title above the plot area.
    fig.update_yaxes(range=_headroom([v for a in answers.values() for v in (a.yes_logit, a.no_logit)]), row=1, col=1)
    fig.update_yaxes(range=_headroom([a.diff for a in answers.values()], minimum=0.3), row=1, col=2)
    fig.update_traces(cliponaxis=False, textfont_size=13)
    fig.update_annotations(font_size=13)  # the subplot titles
    fig.update_layout(barmode="group", height=STEP4_HEIGHT, template="plotly_white",
                      margin=dict(l=10, r=10, t=80, b=10),
                      title=dict(text=f"The LLM's answer for “{shorten(title, 36)}”", font_size=15, y=0.97,
                                 yanchor="top"),
                      legend=dict(orientation="h", y=-0.1, yanchor="top", x=0, font_size=13))
    return fig


# ----------------------------------------------------------------- step 5: ranking

def ranking_step(result: ScoredResult | None, item: str) -> str:
    """Step 5: the candidate's score and rank in both modes among the result's candidates."""
    if not result or not result.rows or item not in result.items:
        return "**Step 5 · The ranking.** Score candidates in the Recommend tab to rank them."
    rows = result.rows
    n = result.items.index(item)
    r_text = ranks([r.score_text for r in rows])
    r_cf = ranks([r.score_cf for r in rows])
    row = rows[n]
    cf_part = (f"with CF {row.score_cf:.3f} (rank {r_cf[n]} of {len(rows)})" if row.score_cf is not None
               else "no CF score")
    label = {1: " The user actually liked it.", 0: " The user actually disliked it."}.get(row.label, "")
    return (f"**Step 5 · The ranking.** Among the {len(rows)} candidates scored: without CF "
            f"{row.score_text:.3f} (rank {r_text[n]}), {cf_part}.{label} "
            "Ranking all candidates by the score is the recommendation.")


# ------------------------------------------------------------------------- the tab

@dataclass(frozen=True)
class ExplainTab(Tab):
    """The walkthrough of one candidate of the current result; its step components follow ``OUTPUT_KEYS``."""

    focus: gr.Dropdown  # the candidate to follow
    step1_md: gr.Markdown
    step1_table: gr.Dataframe
    step2_md: gr.Markdown
    step2_table: gr.Dataframe
    step3_md: gr.Markdown
    step3_html: gr.HTML
    step4_md: gr.Markdown
    step4_table: gr.Dataframe
    step4_fig: gr.Plot
    step5_md: gr.Markdown

    @property
    def outputs(self) -> list:
        """The step components, in ``OUTPUT_KEYS`` order (``Walkthrough.outputs`` fills them)."""
        return [getattr(self, key) for key in OUTPUT_KEYS]

    def after_scoring(self, page: Page) -> Refresh:
        """After every scoring: the candidate list, and the walkthrough of the best candidate."""
        import gradio as gr

        state = page.state

        @gr_error
        def after_score(result):
            choices, value = focus_choices(result)
            return [gr.update(choices=choices, value=value)] + explain(state, result, value).outputs()
        return Refresh(after_score, [page.result], [self.focus] + self.outputs)

    def wire(self, page: Page) -> None:
        import gradio as gr

        state = page.state

        @gr_error
        def on_focus(result, item, progress=gr.Progress()):
            progress(0.1, desc="running the prompt through the LLM, with and without CF tokens")
            return explain(state, result, item).outputs()

        self.focus.input(on_focus, [page.result, self.focus], self.outputs)


def build(state: AppState) -> ExplainTab:
    import gradio as gr

    gr.Markdown("One candidate of your current selection, followed from the CF vectors to the final score. "
                "All numbers are computed live for the user and candidates from the Recommend tab.",
                elem_classes=["lead"])
    focus = gr.Dropdown([], label="Candidate to follow", elem_id="explain-candidate")
    step1_md = gr.Markdown()
    step1_table = gr.Dataframe(interactive=False, show_label=False, wrap=True,
                               column_widths=["20%", "27%", "6%", "7%"] + ["7%"] * SHOW_DIMS + ["5%"])
    step2_md = gr.Markdown()
    # widths in % so no header breaks mid-word at 125 % zoom (1024 CSS pixels)
    step2_table = gr.Dataframe(interactive=False, show_label=False, wrap=True,
                               column_widths=["14%", "9%", "15%", "9%", "53%"])
    step3_md = gr.Markdown()
    step3_html = gr.HTML()
    step4_md = gr.Markdown()
    step4_table = gr.Dataframe(interactive=False, show_label=False, wrap=True,
                               column_widths=["16%", "11%", "11%", "11%", "21%", "30%"])
    step4_fig = gr.Plot(show_label=False)
    step5_md = gr.Markdown()
    return ExplainTab(focus=focus, step1_md=step1_md, step1_table=step1_table, step2_md=step2_md,
                      step2_table=step2_table, step3_md=step3_md, step3_html=step3_html, step4_md=step4_md,
                      step4_table=step4_table, step4_fig=step4_fig, step5_md=step5_md)
