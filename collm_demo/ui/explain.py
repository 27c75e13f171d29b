"""How it works tab: one candidate of the current selection, followed through the model.

Step 1 CF vectors → step 2 projector → step 3 where the tokens enter the sequence →
step 4 the LLM's Yes/No logits → step 5 the score and the ranking. Every number is live.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..errors import InputError
from . import core
from .state import AppState
from .values import ScoredResult, focus_choices, ranks
from .views import COLD_COLOUR, WARM_COLOUR, cf_label, shorten

SHOW_DIMS = 5


STEP4_HEIGHT = 400


def _headroom(values: list[float], share: float = 0.3, minimum: float = 0.5) -> list[float]:
    """A y range over 0 and ``values`` with room beyond the largest bar, either side, for its label."""
    low, high = min(0.0, min(values)), max(0.0, max(values))
    pad = max(minimum, share * max(abs(low), abs(high)))
    return [low - pad if low < 0 else low, high + pad if high > 0 else high + pad * 0.2]


def _vec_row(name: str, source: str, vec) -> list:
    values = vec.tolist()
    return ([name, source, len(values), round(float(np.linalg.norm(values)), 3)]
            + [round(v, 3) for v in values[:SHOW_DIMS]] + ["…"])


def explain(state: AppState, result: ScoredResult | None, item: str | None) -> dict:
    """All numbers for the walkthrough, as plain values (tables, figures, markdown); the CF
    backend is the one the result was scored with."""
    pipe = state.pipeline(result.cf if result else None)
    cf = pipe.cf_name
    profile = core.profile_of(state, result)
    if not profile.items:
        raise InputError("The current history is empty; add movies in the Recommend tab first.")
    rows = result.rows if result else ()
    item = item or (rows[0].item if rows else state.catalog.item_ids[0])
    title = state.dataset.title(item)
    out: dict = {"item": item, "title": title}
    has_cf = pipe.has_projector

    # Step 1: CF vectors
    if pipe.cf is not None:
        uvec, source = core.user_vector(state, profile, cf, for_tokens=True)
        cf_uvec, _ = core.user_vector(state, profile, cf)  # what the CF model alone scores with
        ivec = pipe.cf.item_vectors([item])[0]
        name = cf_label(pipe)
        isource = (f"trained {name} vector" if pipe.cf.has_item(item) else
                   "no training interactions: the default “no information” vector")
        cols = ["vector", "where it comes from", "dims", "norm"] + [f"d{n}" for n in range(SHOW_DIMS)] + ["…"]
        out["step1_table"] = pd.DataFrame([_vec_row(profile.describe(), source.split(" — ")[0], uvec),
                                           _vec_row(f"{title} (#{item})", isource, ivec)], columns=cols)
        mf = float(pipe.cf.score_vectors(cf_uvec.view(1, -1), ivec.view(1, -1))[0])
        differs = not torch.equal(uvec, cf_uvec)
        spec = pipe.backend
        extra = f"; {spec.vector_note}" if spec.vector_note else ""
        out["step1_md"] = (
            f"**Step 1 · The CF vectors.** The collaborative-filtering model ({name}) {spec.blurb}; here "
            f"{len(uvec)} numbers each (the first {SHOW_DIMS} are shown{extra}). Their dot "
            f"product is the CF model's own prediction: sigmoid(user · item + global bias) = **{mf:.3f}** that "
            "the user likes the movie. CoLLM does not use that "
            "number; it hands the vectors themselves to the LLM."
            + (f" (This user is folded in, and the two uses fold in differently: the CF model alone pulls "
               f"the fit towards the no-information vector with strength {pipe.cf.foldin_l2:g}, tuned for its "
               f"own score; the vector shown, handed to the projector, uses {pipe.token_foldin_l2():g}, the "
               "strength the projector was trained on.)" if differs else ""))
    else:
        out["step1_table"] = pd.DataFrame()
        out["step1_md"] = "**Step 1 · The CF vectors.** No CF model is loaded, so there are none."

    # Step 2: projector
    if has_cf:
        tokens, near = core.nearest(state, profile, item, cf)
        wn = core.word_norm(state, cf)
        norms = np.linalg.norm(tokens, axis=1)
        out["step2_table"] = pd.DataFrame(
            [["user token", round(float(norms[0]), 2), round(wn, 2), round(float(norms[0] / wn), 1),
              ", ".join(f"“{w.strip() or w}” {c:.2f}" for w, c in near[0][:5])],
             ["item token", round(float(norms[1]), 2), round(wn, 2), round(float(norms[1] / wn), 1),
              ", ".join(f"“{w.strip() or w}” {c:.2f}" for w, c in near[1][:5])]],
            columns=["mapped token", "norm", "typical word norm", "ratio", "nearest words (cosine)"])
        cf_dim, width, out_dim = pipe.projector_shape
        out["step2_md"] = (
            f"**Step 2 · The projector.** A small network (Linear {cf_dim}→{width}, ReLU, "
            f"Linear {width}→{out_dim}) turns each CF vector into one {out_dim}-number "
            "vector of the same kind as a word embedding: a *soft token*. It is the only part trained in stage 2. "
            + ("Its outputs are not close to any real word (cosines below), so they act as new words the LLM "
               "learned to read." if max(near[0][0][1], near[1][0][1]) < 0.5 else
               "Its outputs lie fairly close to some real words (cosines below)."))
    else:
        out["step2_table"] = pd.DataFrame()
        out["step2_md"] = "**Step 2 · The projector.** No projector is loaded (text-only mode)."

    # Step 3: the token sequence
    with_cf = has_cf
    prompt = pipe.prompt_tokens(profile.items, profile.labels, item, with_cf)
    slots = {}
    if with_cf:
        slots[prompt.user_slot] = "user"
        slots[prompt.item_slot] = "item"
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
    out["step3_html"] = f'<div class="tokens">{"".join(chips)}</div>'
    if with_cf:
        out["step3_md"] = (
            f"**Step 3 · Into the token sequence.** The CoLLM prompt is {len(prompt.ids)} tokens. The user slot is "
            f"position **{prompt.user_slot}** and the item slot position **{prompt.item_slot}**. "
            "The LLM never sees the placeholder's own embedding: it is replaced by the soft token before the "
            f"first layer. Grey tokens (0–{prompt.prefix_len - 1}) are the *prefix* shared by every candidate of "
            "this user; the app runs it once and reuses its cache for all candidates, then runs only the white "
            "*suffix* tokens per candidate.")
    else:
        out["step3_md"] = (f"**Step 3 · The token sequence.** The text-only prompt is {len(prompt.ids)} tokens; "
                           "there are no CF slots.")

    # Step 4: Yes / No
    answers = {"text": core.answer_logits(state, profile, item, False, cf)}
    if has_cf:
        answers["cf"] = core.answer_logits(state, profile, item, True, cf)
    text_name, cf_mode = core.mode_names(pipe)
    table = []
    for key, name in (("text", f"without CF — {text_name}"), ("cf", f"with CF — {cf_mode}")):
        if key in answers:
            a = answers[key]
            table.append([name, round(a.yes_logit, 3), round(a.no_logit, 3), round(a.diff, 3), round(a.score, 4),
                          ", ".join(f"“{w}” {p:.2f}" for w, p in a.top[:4])])
    out["step4_table"] = pd.DataFrame(table, columns=["mode", "logit “Yes”", "logit “No”", "Yes − No",
                                                      "score = sigmoid(Yes − No)", "most likely next tokens"])
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
    out["step4_fig"] = fig
    out["step4_md"] = (
        "**Step 4 · The answer.** The LLM reads the sequence and predicts the next token after “#Answer:”. "
        "Only two entries of that prediction matter: the logits (unnormalised scores) of “Yes” and “No”. "
        "The score is P(Yes) when the choice is restricted to those two: sigmoid(logit Yes − logit No). "
        "Whether “Yes” or “No” is the single most likely next token does not matter (the last column shows "
        "what the model would actually write next); only their difference does.")

    # Step 5: ranking
    if rows:
        r_text = ranks([r.score_text for r in rows])
        r_cf = ranks([r.score_cf for r in rows])
        n = result.items.index(item) if item in result.items else None
        if n is not None:
            row = rows[n]
            cf_part = (f"with CF {row.score_cf:.3f} (rank {r_cf[n]} of {len(rows)})" if row.score_cf is not None
                       else "no CF score")
            label = {1: " The user actually liked it.", 0: " The user actually disliked it."}.get(row.label, "")
            out["step5_md"] = (f"**Step 5 · The ranking.** Among the {len(rows)} candidates scored: without CF "
                               f"{row.score_text:.3f} (rank {r_text[n]}), {cf_part}.{label} "
                               "Ranking all candidates by the score is the recommendation.")
    out.setdefault("step5_md", "**Step 5 · The ranking.** Score candidates in the Recommend tab to rank them.")
    return out


OUTPUT_KEYS = ["step1_md", "step1_table", "step2_md", "step2_table", "step3_md", "step3_html",
               "step4_md", "step4_table", "step4_fig", "step5_md"]


def build(state: AppState):
    import gradio as gr

    w: dict = {}
    gr.Markdown("One candidate of your current selection, followed from the CF vectors to the final score. "
                "All numbers are computed live for the user and candidates from the Recommend tab.",
                elem_classes=["lead"])
    w["focus"] = gr.Dropdown([], label="Candidate to follow", elem_id="explain-candidate")
    w["step1_md"] = gr.Markdown()
    w["step1_table"] = gr.Dataframe(interactive=False, show_label=False, wrap=True,
                                    column_widths=["20%", "27%", "6%", "7%"] + ["7%"] * SHOW_DIMS + ["5%"])
    w["step2_md"] = gr.Markdown()
    # widths in % so no header breaks mid-word at 125 % zoom (1024 CSS pixels)
    w["step2_table"] = gr.Dataframe(interactive=False, show_label=False, wrap=True,
                                    column_widths=["14%", "9%", "15%", "9%", "53%"])
    w["step3_md"] = gr.Markdown()
    w["step3_html"] = gr.HTML()
    w["step4_md"] = gr.Markdown()
    w["step4_table"] = gr.Dataframe(interactive=False, show_label=False, wrap=True,
                                    column_widths=["16%", "11%", "11%", "11%", "21%", "30%"])
    w["step4_fig"] = gr.Plot(show_label=False)
    w["step5_md"] = gr.Markdown()
    return w


def wire(state: AppState, w: dict, result_state, gr_error):
    import gradio as gr

    outs = [w[k] for k in OUTPUT_KEYS]

    @gr_error
    def on_focus(result, item, progress=gr.Progress()):
        progress(0.1, desc="running the prompt through the LLM, with and without CF tokens")
        data = explain(state, result, item)
        return [data[k] for k in OUTPUT_KEYS]

    @gr_error
    def after_score(result):
        choices, value = focus_choices(result)
        data = explain(state, result, value)
        return [gr.update(choices=choices, value=value)] + [data[k] for k in OUTPUT_KEYS]

    w["focus"].input(on_focus, [result_state, w["focus"]], outs)
    return after_score, [result_state], [w["focus"]] + outs
