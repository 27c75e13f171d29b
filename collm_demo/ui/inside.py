"""Inside the LLM tab: how much the answer uses the two CF tokens, where, for one user and candidate.

Attention by layer (CF on next to CF off), gradient x input attribution per token, ablation with the
CF model's no-information vectors, the logit lens of the two CF slots next to their nearest input
words, and the projector's neighbourhood preservation; plus guided scenarios for a teacher. The
numbers come from ``collm_demo.inside.explain_prompt`` (the engine's one forward path); the
``/inside`` endpoint returns the same numbers as JSON (``inside_json``).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .. import inside as engine
from ..errors import InputError
from . import core
from .memo import memoize
from .page import Page, Refresh, Tab, gr_error
from .parsing import parse_cf, parse_item_ids, parse_user_id
from .state import AppState
from .values import Profile, ProfileKind, ScoredResult, focus_choices
from .views import empty_figure

if TYPE_CHECKING:
    import gradio as gr

GROUP_COLOURS = {"user slot": "#E64980", "item slot": "#1C7ED6", "title": "#F08C00", "history": "#37B24D",
                 "template": "#ADB5BD"}
ATTENTION_HEIGHT, HISTOGRAM_HEIGHT = 420, 300


# ------------------------------------------------------------------------ the numbers

def explain(state: AppState, profile: Profile, item: str, cf: str | None = None, progress=None) -> dict:
    """The view's numbers for one profile and candidate (memoised on them)."""
    pipe = state.pipeline(cf)
    if not pipe.has_projector:
        raise InputError("Looking inside needs a CF model and a trained projector (none loaded).")
    if not profile.items:
        raise InputError("The history is empty: add at least one movie first.")
    if item not in state.catalog.item_title:
        raise InputError(f"Unknown item {item!r}.")
    return _explain(state, profile, item, pipe.cf_name, progress)


@memoize(64, ignore=("progress",))
def _explain(state: AppState, profile: Profile, item: str, cf_name: str, progress=None) -> dict:
    if progress:
        progress(0.1, desc="attention, attribution, ablation and logit lens (five passes of the LLM)")
    pipe = state.pipeline(cf_name)
    uvec, source = core.user_vector(state, profile, cf_name, for_tokens=True)
    out = engine.explain_prompt(pipe, profile.items, profile.labels, item, uvec)
    catalog = state.catalog
    info = catalog.users.get(profile.user) if profile.user else None
    return out | {"item": item, "user": profile.user, "profile": profile.describe(), "cf": cf_name,
                  "warm_item": catalog.item_warm(item), "item_train": int(catalog.item_train.get(item, 0)),
                  "warm_user": bool(info and info.warm and profile.kind is ProfileKind.USER), "user_vector": source,
                  "neighbourhood": neighbourhood(state, cf_name)}


@memoize(8)
def neighbourhood(state: AppState, cf_name: str) -> dict:
    """The projector's neighbourhood preservation over all items (cheap; once per backend)."""
    return engine.neighbourhoods(state.pipeline(cf_name))


def inside_json(state: AppState, user_id, item_id, cf_model=None) -> dict:
    """The /inside API: the view's numbers for a real user and one item, as JSON."""
    user = parse_user_id(state, user_id)
    items = parse_item_ids(state, item_id, "item_id")
    if len(items) != 1:
        raise InputError(f"item_id: give exactly one item id, got {len(items)}")
    return explain(state, core.real_profile(state, user), items[0], parse_cf(state, cf_model))


# ----------------------------------------------------------------------------- views

def attention_figure(data: dict | None) -> go.Figure:
    if not data:
        return empty_figure("Pick a candidate and press “Look inside”.", height=ATTENTION_HEIGHT)
    fig = make_subplots(1, 2, shared_yaxes=True, horizontal_spacing=0.05,
                        subplot_titles=("CF on: the CoLLM prompt", "CF off: the text-only prompt"))
    layers = list(range(1, data["layers"] + 1))
    for col, mode in enumerate(("cf_on", "cf_off"), 1):
        shares = np.asarray(data["attention"][mode])
        for g, group in enumerate(data["groups"]):
            if mode == "cf_off" and group in engine.CF_GROUPS:
                continue
            fig.add_trace(go.Scatter(x=layers, y=shares[:, g], mode="lines+markers", name=group, legendgroup=group,
                                     showlegend=col == 1, marker_size=5,
                                     line=dict(color=GROUP_COLOURS[group], width=3 if group in engine.CF_GROUPS else 2),
                                     hovertemplate=f"{group}<br>layer %{{x}}: %{{y:.4f}}<extra></extra>"), 1, col)
    fig.update_yaxes(type="log", title_text="share of the answer position's attention (log)", row=1, col=1)
    fig.update_xaxes(title_text="layer")
    fig.update_layout(height=ATTENTION_HEIGHT, template="plotly_white", margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", y=-0.2, x=0))
    return fig


def attention_table(data: dict | None) -> pd.DataFrame:
    if not data:
        return pd.DataFrame(columns=["layer"])
    on, off = np.asarray(data["attention"]["cf_on"]), np.asarray(data["attention"]["cf_off"])
    frame = pd.DataFrame({"layer": range(1, data["layers"] + 1)})
    for g, group in enumerate(data["groups"]):
        frame[f"on: {group}"] = on[:, g].round(4)
    for g, group in enumerate(data["groups"]):
        if group not in engine.CF_GROUPS:
            frame[f"off: {group}"] = off[:, g].round(4)
    return frame


def attribution_html(data: dict | None) -> str:
    """The CF prompt, each token shaded by its gradient x input (red: towards Yes, blue: towards No)."""
    if not data:
        return ""
    values = np.asarray(data["attribution"]["values"])
    scale = np.abs(values).max() or 1.0
    spans = []
    for token, value, group in zip(data["attribution"]["tokens"], values, data["attribution"]["groups"]):
        alpha = min(1.0, abs(value) / scale)
        colour = f"rgba(224,49,49,{alpha:.2f})" if value > 0 else f"rgba(28,126,214,{alpha:.2f})"
        slot = "outline:2px solid #1a1a1a;font-weight:700;" if group in engine.CF_GROUPS else ""
        spans.append(f'<span class="inside-tok" style="background:{colour};border-radius:3px;{slot}" '
                     f'title="{html.escape(group)}: {value:+.4f}">{html.escape(token)}</span>')
    return f'<pre class="prompt" id="inside-attribution">{"".join(spans)}</pre>'


def ablation_table(data: dict | None) -> pd.DataFrame:
    cols = ["prompt", "P(Yes)", "change vs full CoLLM"]
    if not data:
        return pd.DataFrame(columns=cols)
    ab = data["ablation"]
    rows = [("full CoLLM prompt (both CF tokens)", ab["full"]),
            ("user token ← no-information vector", ab["user_none"]),
            ("item token ← no-information vector", ab["item_none"]),
            ("both tokens ← no-information vectors", ab["both_none"]),
            ("text-only prompt (no CF slots)", ab["text_only"])]
    return pd.DataFrame([(name, round(v, 4), round(v - ab["full"], 4)) for name, v in rows], columns=cols)


def lens_table(data: dict | None) -> pd.DataFrame:
    cols = ["layer", "user slot points to", "item slot points to"]
    if not data:
        return pd.DataFrame(columns=cols)
    def words(row):
        return ", ".join(f"{w!r} {p:.2f}" for w, p in row[:3])
    lens = data["logit_lens"]
    rows = [("input" if n == 0 else str(n), words(u), words(i))
            for n, (u, i) in enumerate(zip(lens["user slot"], lens["item slot"]))]
    near = data["nearest_input_words"]
    rows.append(("nearest input words (cosine)", ", ".join(f"{w!r} {s:.2f}" for w, s in near["user slot"][:3]),
                 ", ".join(f"{w!r} {s:.2f}" for w, s in near["item slot"][:3])))
    return pd.DataFrame(rows, columns=cols)


def histogram_figure(hood: dict | None) -> go.Figure:
    if not hood:
        return empty_figure("No projector loaded.", height=HISTOGRAM_HEIGHT)
    hist = hood["histogram"]
    fig = go.Figure(go.Bar(x=hist["kept"], y=hist["items"], marker_color="#4C6EF5",
                           hovertemplate="%{y} items keep %{x:.0%} of their neighbours<extra></extra>"))
    fig.update_layout(height=HISTOGRAM_HEIGHT, template="plotly_white", margin=dict(l=10, r=10, t=40, b=10),
                      title=dict(text=f"Share of each item's {hood['k']} nearest CF neighbours still nearest after "
                                      f"the projector (mean {hood['mean']:.2f})", font_size=13),
                      xaxis=dict(title="share kept", tickformat=".0%"), yaxis_title="items")
    return fig


def summary_text(data: dict | None) -> str:
    if not data:
        return "Pick a candidate from your current selection (or a guided scenario) and press **Look inside**."
    ab, on = data["ablation"], np.asarray(data["attention"]["cf_on"])
    shares = data["attribution"]["shares"]
    gap = ab["full"] - ab["both_none"]
    item = f"**{data['title']}** ({'warm' if data['warm_item'] else 'cold'} item, {data['item_train']} training interactions)"
    return (f"{item} for {data['profile']}. CoLLM P(Yes) **{ab['full']:.3f}**, text-only {ab['text_only']:.3f}. "
            f"**Attention:** averaged over layers, the answer position gives {on[:, 0].mean():.2%} of its attention "
            f"to the user token and {on[:, 1].mean():.2%} to the item token (most goes to the template, which "
            f"holds the first token: an attention sink). **Attribution:** the two CF tokens carry "
            f"{shares['user slot'] + shares['item slot']:.1%} of the total |gradient × input|. "
            f"**Ablation:** with both tokens at the no-information vectors the score is {ab['both_none']:.3f} "
            f"({gap:+.3f} of the CF effect); the user token alone accounts for {ab['full'] - ab['user_none']:+.3f}, "
            f"the item token for {ab['full'] - ab['item_none']:+.3f}.")


# ----------------------------------------------------------------- guided scenarios

SCENARIOS = {
    "warm": ("1 · A warm user and a warm item",
             "A user and a movie the CF model knows well. Look at the **ablation** first: how far does P(Yes) move "
             "when both CF tokens are swapped for the no-information vectors? Then the **attention** chart: the CF "
             "slots get a small share, larger in some layers than others."),
    "cold": ("2 · The same user with a cold item",
             "Same user, a movie with almost no training interactions. Its item token is (close to) the "
             "no-information vector, so the **item** ablation barely moves the score: whatever CF effect is left "
             "comes from the user token. Compare the attribution share of the item slot with scenario 1."),
    "composed": ("3 · A composed user with three liked films",
                 "No real user: a history of three liked, popular films, folded in to a user vector. With three "
                 "interactions the user token carries little; look at the **user** ablation row and at what the "
                 "logit lens says the user token becomes layer by layer."),
    "simulator": ("4 · Cold-start simulator: k = 0 to all",
                  "Opens the **Warm vs cold** tab's simulator on the current user: an item refit from k of its "
                  "training interactions. Move k from 0 to all and watch the CoLLM score leave the text-only line "
                  "as the item token gains information."),
}


def scenario_pick(state: AppState, name: str, result: ScoredResult | None) -> tuple[Profile, str]:
    """The (profile, candidate) a guided scenario looks at; real users are the shipped data's."""
    catalog = state.catalog
    counts = catalog.item_train
    if name == "composed":
        popular = sorted(counts, key=lambda i: (-counts[i], i))[:4]
        return Profile(ProfileKind.COMPOSED, None, popular[:3], (1, 1, 1)), popular[3]
    profile = core.real_profile(state, catalog.default_user())
    tests = [str(i) for i in catalog.test_items(profile.user)["item"]]
    if name == "warm":
        return profile, max(tests, key=lambda i: (counts.get(i, 0), i))
    cold = [i for i in tests if not catalog.item_warm(i)]
    if not cold:  # none among the user's test items: the least-trained item the catalogue has
        cold = sorted(catalog.item_ids, key=lambda i: (counts.get(i, 0), i))
    return profile, min(cold, key=lambda i: (counts.get(i, 0), i))


# ------------------------------------------------------------------------- widgets

def outputs(data: dict | None) -> list:
    """What the tab shows for ``data`` (``explain``'s numbers), in ``InsideTab.outputs`` order."""
    hood = (data or {}).get("neighbourhood")
    lens_note = "" if not data else f"*Why the two differ:* {data['why_they_differ']}"
    hood_md = ("" if not hood else f"**Neighbourhoods kept:** on average **{hood['mean']:.0%}** of an item's "
               f"{hood['k']} nearest neighbours in CF space (cosine) are still among its {hood['k']} nearest after "
               f"the projector ({hood['items']} items; 1.0 would be a projector that keeps the collaborative "
               "structure exactly).")
    return [summary_text(data), attention_figure(data), attention_table(data), attribution_html(data),
            ablation_table(data), lens_table(data), lens_note, hood_md, histogram_figure(hood)]


@dataclass(frozen=True)
class InsideTab(Tab):
    """One look inside the LLM for a candidate of the current result, or for a guided scenario."""

    scenario_buttons: dict[str, gr.Button]  # by ``SCENARIOS`` key
    scenario_text: gr.Markdown
    focus: gr.Dropdown  # the candidate to look at
    run: gr.Button
    selection: gr.State  # (profile, item, CF backend) a scenario picked, for the look that follows
    summary: gr.Markdown
    attention_fig: gr.Plot
    attention_table: gr.Dataframe
    attribution: gr.HTML
    ablation: gr.Dataframe
    lens: gr.Dataframe
    lens_note: gr.Markdown
    hood_md: gr.Markdown
    hood_fig: gr.Plot

    @property
    def outputs(self) -> list:
        """What ``outputs`` fills, in its order."""
        return [self.summary, self.attention_fig, self.attention_table, self.attribution, self.ablation,
                self.lens, self.lens_note, self.hood_md, self.hood_fig]

    def after_scoring(self, page: Page) -> Refresh:
        """After every scoring: only the candidate list (the look itself is on demand: seconds)."""
        import gradio as gr

        def refresh(result):
            choices, value = focus_choices(result)
            return gr.update(choices=choices, value=value)
        return Refresh(refresh, [page.result], [self.focus])

    def wire(self, page: Page) -> None:
        import gradio as gr

        state = page.state

        @gr_error
        def look(result, item, progress=gr.Progress()):
            if not item:
                raise InputError("Pick a candidate first (score some in the Recommend tab, or use a scenario).")
            profile = core.profile_of(state, result)
            return outputs(explain(state, profile, item, result.cf if result else None, progress))

        @gr_error
        def look_selection(selection, progress=gr.Progress()):
            profile, item, cf = selection
            return outputs(explain(state, profile, item, cf, progress))

        self.run.click(look, [page.result, self.focus], self.outputs)
        for key in ("warm", "cold", "composed"):
            picked = self.scenario_buttons[key].click(scenario(state, key), [page.result],
                                                      [self.scenario_text, self.selection, self.summary])
            picked.success(look_selection, [self.selection], self.outputs)
        self._wire_simulator_scenario(page)

    def _wire_simulator_scenario(self, page: Page) -> None:
        """Scenario 4 opens the Warm vs cold tab and reruns its simulator on the current result."""
        import gradio as gr

        def to_simulator():
            label, text = SCENARIOS["simulator"]
            gr.Info(f"{label}: {text}", duration=20)  # the other tab is shown: say what to look at there too
            return f"**{label}** — {text}", gr.Tabs(selected="warmcold")

        opened = self.scenario_buttons["simulator"].click(to_simulator, None, [self.scenario_text, page.tabs])
        page.refreshes["warmcold"].after(opened)


def scenario(state: AppState, name: str):
    """A guided scenario's first step: what to look at (at once), before the look itself (seconds).
    The CF backend is the current result's, as for "Look inside"."""
    @gr_error
    def pick(result):
        profile, item = scenario_pick(state, name, result)
        label, text = SCENARIOS[name]
        head = f"**{label}** — {profile.describe()}, candidate **{state.dataset.title(item)}** (#{item}). {text}"
        return head, (profile, item, result.cf if result else None), "*Running the five passes of the LLM…*"
    return pick


def build(state: AppState) -> InsideTab:
    import gradio as gr

    gr.Markdown("How much does the LLM *use* the two CF tokens, where, and for which items? For one user and "
                "candidate: where the answer position looks, which tokens move the Yes−No logit, what happens "
                "when the tokens carry no information, and what each token becomes inside the model. Computed "
                "on demand (five passes of the LLM in float32: a few seconds).", elem_classes=["lead"])
    gr.Markdown("**Guided scenarios** (one click each: they pick the user and movie and run the view)",
                elem_classes=["note"])
    with gr.Row():
        buttons = {key: gr.Button(label, size="sm", elem_id=f"inside-scenario-{key}")
                   for key, (label, _) in SCENARIOS.items()}
    scenario_text = gr.Markdown(elem_id="inside-scenario-text")
    with gr.Row():
        focus = gr.Dropdown([], label="Candidate (from the Recommend tab's selection)", min_width=320,
                            elem_id="inside-candidate")
        run = gr.Button("Look inside", variant="primary", elem_id="inside-run")
    selection = gr.State(None)
    summary = gr.Markdown(summary_text(None), elem_id="inside-summary")
    gr.Markdown("### Attention by layer")
    attention_fig = gr.Plot(attention_figure(None), show_label=False, elem_id="inside-attention")
    attention = gr.Dataframe(attention_table(None), interactive=False, label="Shares by layer", wrap=True)
    gr.Markdown("### Attribution: which tokens move the Yes−No logit (gradient × input; red → Yes, blue → No)")
    attribution = gr.HTML()
    gr.Markdown("### Ablation: the CF tokens replaced by the CF model's no-information vectors")
    ablation = gr.Dataframe(ablation_table(None), interactive=False, show_label=False, elem_id="inside-ablation")
    gr.Markdown("### What the token becomes: logit lens of the two CF slots")
    lens = gr.Dataframe(lens_table(None), interactive=False, show_label=False, wrap=True, elem_id="inside-lens")
    lens_note = gr.Markdown(elem_classes=["note"])
    gr.Markdown("### Neighbourhoods kept by the projector")
    hood_md = gr.Markdown()
    hood_fig = gr.Plot(histogram_figure(None), show_label=False)
    gr.Markdown("The same measurements over a seeded sample of test rows, warm vs cold items and users, with "
                "bootstrap intervals, are on the **Warm vs cold** tab.", elem_classes=["note"])
    return InsideTab(scenario_buttons=buttons, scenario_text=scenario_text, focus=focus, run=run, selection=selection,
                     summary=summary, attention_fig=attention_fig, attention_table=attention, attribution=attribution,
                     ablation=ablation, lens=lens, lens_note=lens_note, hood_md=hood_md, hood_fig=hood_fig)
