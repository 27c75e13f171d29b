"""The Gradio app: one module per tab (``TABS``); what they share: ``state`` (config + ``hub``
models + ``catalog`` users/items + ``assets`` files), ``page`` (the contract between the page and
its tabs), ``parsing`` (what the user typed), ``core`` (profiles, scoring, map positions),
``values`` (what tabs pass each other), ``views`` (presentation), ``memo`` (argument-keyed caches).

``build_demo()`` returns the ``gr.Blocks``; ``launch_kwargs()`` the theme and CSS that
Gradio 6 takes in ``launch()``. Handlers are plain functions (see each tab module) so
tests can call them without a server. Tabs never import each other. The engine
(``collm_demo`` outside ``ui``) never imports gradio; the app reaches it through the
``Pipeline`` only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import InputError
from . import core, embedding, explain, guard, recommend, same_films, warm_cold
from . import inside as inside_view
from .page import Page, Refresh, TabSpec, gr_error
from .state import AppState, get_state
from .views import cf_label

if TYPE_CHECKING:
    import gradio as gr

__all__ = ["build_demo", "launch_kwargs", "compare_api", "get_state", "AppState", "InputError"]

CSS = """
.gradio-container {width: 100% !important; max-width: 1320px !important; margin: 0 auto !important;}
.lead p {font-size: 1.02em; margin-bottom: 4px;}
.note p, .note li {font-size: 0.92em; color: var(--body-text-color-subdued);}
.banner {border-radius: 8px; padding: 2px 14px; border: 1px solid #fab005; background: #fff9db;}
.banner p {color: #5c3c00 !important;}
.status-line p {font-size: 0.88em; color: var(--body-text-color-subdued); margin: 0;}
pre.prompt {white-space: pre-wrap; word-break: break-word; font-size: 0.86em; line-height: 1.55;
            padding: 10px 12px; border-radius: 8px; border: 1px solid var(--border-color-primary);
            background: var(--background-fill-secondary); margin: 4px 0 6px 0;}
.slot {font-weight: 700; border-radius: 4px; padding: 0 4px; color: #1a1a1a;}
.slot-user {background: #fcc2d7; border: 1px solid #e64980;}
.slot-item {background: #a5d8ff; border: 1px solid #1c7ed6;}
.target {text-decoration: underline; text-decoration-thickness: 2px;}
.badge {font-size: 0.72em; font-weight: 600; background: #4c6ef5; color: #fff; border-radius: 10px;
        padding: 1px 8px; margin-left: 6px; vertical-align: middle;}
.muted {color: var(--body-text-color-subdued); font-size: 0.88em;}
.tokens {display: flex; flex-wrap: wrap; gap: 3px; font-family: var(--font-mono); font-size: 12px;}
.tok {border: 1px solid #ced4da; border-radius: 4px; padding: 1px 4px; background: #f1f3f5; color: #212529;}
.tok sub {color: #868e96; font-size: 9px; margin-right: 2px;}
.tok-suffix {background: #ffffff;}
.tok-user {background: #fcc2d7; border-color: #e64980; font-weight: 700;}
.tok-item {background: #a5d8ff; border-color: #1c7ed6; font-weight: 700;}
/* Tables wrap between words only: gr.Dataframe's wrap mode sets word-break: break-word, which
   splits "year" or "disliked" mid-word in a narrow column (125 % zoom); the column widths leave
   room for each column's longest word instead. */
#results-table span.text, #history-table span.text, #compare-table span.text, #same-table span.text
    {word-break: normal !important; overflow-wrap: normal !important; hyphens: none;}
/* 20 candidate chips are 20 lines: a box of about seven (scrolling inside) keeps the Score
   button within reach of a 1280x800 screen. */
#candidates .wrap-inner, #compare-candidates .wrap-inner {max-height: 290px; overflow-y: auto;}
"""

# Run in the browser when a tab is shown: let the tab take its size, then a window resize makes
# every (responsive) plotly figure re-measure its container.
RESIZE_PLOTS_JS = "() => { requestAnimationFrame(() => setTimeout(() => window.dispatchEvent(new Event('resize')), 30)); }"

HEADER = """
# CoLLM demo: collaborative-filtering tokens inside an LLM

A recommender asks a small LLM (*“would this user enjoy this movie? Yes or No”*) and reads P(Yes).
**CoLLM** (Zhang et al., [arXiv 2310.19488](https://arxiv.org/abs/2310.19488)) adds two special token
positions to that prompt and fills them with the user's and the movie's *collaborative-filtering* vectors
(learned from who-liked-what, mapped into the LLM's embedding space by a small projector). This app runs
the real thing on MovieLens-100K and shows every score **with and without** those tokens.
"""


@gr_error
def compare_api(state: AppState, user_id: str, item_ids: str, cf_model: str | None = None) -> list[dict]:
    """The logic behind the /compare endpoint (raises gr.Error on bad input)."""
    return core.compare(state, user_id, item_ids, cf_model)


@gr_error
def inside_api(state: AppState, user_id: str, item_id: str, cf_model: str | None = None) -> dict:
    """The logic behind the /inside endpoint (raises gr.Error on bad input)."""
    return inside_view.inside_json(state, user_id, item_id, cf_model)


@gr_error
def same_films_api(state: AppState, user_ids: str = "", item_ids: str = "", cf_model: str | None = None) -> dict:
    """The logic behind the /same_films endpoint (raises gr.Error on bad input)."""
    return same_films.same_films_json(state, user_ids, item_ids, cf_model)


def plain_status(state: AppState, cf: str | None = None) -> str:
    """The header's one line in plain words (file paths and flags are in the details fold)."""
    pipe = state.pipeline(cf or None)
    llm = pipe.llm.name.split(":")[-1].split("/")[-1]
    if pipe.has_projector:
        tokens = f"with {cf_label(pipe)} tokens"
    else:
        tokens = "text only (no CF tokens: " + ("the checkpoints were refused)" if state.hub.refusal else "none trained)")
    return f"Running **{llm}** {tokens} on MovieLens-100K, on the {pipe.runtime.device.type.upper()}."


def status_line(state: AppState, cf: str | None = None) -> str:
    pipe = state.pipeline(cf or None)
    cf = pipe.cf
    backends = state.hub.backends()
    parts = [f"LLM `{pipe.llm.name}`", f"data `{state.dataset.name}`",
             f"CF model {cf_label(pipe) + ', ' + str(cf.dim) + '-dim vectors' if cf is not None else '—'}"
             + (f" (also: {', '.join(others)})" if (others := [b for b in backends if b != pipe.cf_name]) else ""),
             f"LoRA {'✓' if pipe.has_lora else '✗'}", f"projector {'✓' if pipe.has_projector else '✗'}",
             f"checkpoints `{state.config.checkpoint_dir}`" + (" (refused)" if state.hub.refusal is not None else ""),
             f"runs on {pipe.runtime.device.type} in " + ("bf16 autocast" if pipe.runtime.bf16 else "float32")
             + f" ({pipe.runtime.reason}; same request, same scores within {pipe.runtime.tolerance:g})"]
    return " · ".join(parts)


def banner(state: AppState) -> str:
    notice = state.hub.notice
    if not notice:
        return ""
    if state.hub.refusal is not None:  # the notice names the refused file and the reason
        return (f"⚠️ **The checkpoints were refused.** {notice} Scores still work (the plain LLM, no CF tokens); columns "
                "that need the checkpoints show “—”.")
    return (f"⚠️ **Not everything is trained.** {notice} Scores still work in the mode the loaded checkpoints "
            "allow; columns that need missing parts show “—”.")


TABS = (
    TabSpec("Recommend", "recommend", recommend.build),
    TabSpec("Embedding space", "embedding", embedding.build),
    TabSpec("Warm vs cold", "warmcold", warm_cold.build),
    TabSpec("How it works", "how", explain.build),
    TabSpec("Inside the LLM", "inside", inside_view.build),
    TabSpec("Same films, different users", "samefilms", same_films.build),
)


def build_demo(state: AppState | None = None) -> gr.Blocks:
    import gradio as gr

    state = state or get_state()
    with gr.Blocks(title="CoLLM demo: CF tokens inside an LLM", analytics_enabled=False) as demo:
        gr.Markdown(HEADER)
        notice = gr.Markdown(visible=False, elem_classes=["banner"], elem_id="notice")
        headline = gr.Markdown(elem_classes=["status-line"], elem_id="status-plain")
        with gr.Accordion("Details: model, data, checkpoints, device", open=False, elem_id="status-details"):
            status = gr.Markdown(elem_classes=["status-line"], elem_id="status-line")
        result_state = gr.State(None)
        with gr.Tabs(elem_id="tabs") as tabs:
            built = {}
            for spec in TABS:
                with gr.Tab(spec.label, id=spec.id, elem_id=f"tab-{spec.id}"):
                    built[spec.id] = spec.build(state)

        # A plot updated while its tab is hidden is laid out at plotly's default 700 px (its
        # container has no size then) and Gradio only resizes it when its value changes, so after a
        # CF-model switch the map filled ~55 % of its width and the simulator chart overflowed its
        # box (its last point cut off). Gradio's plots are responsive (they listen to window
        # resizes): one resize event once the newly shown tab has its size fixes every plot in it.
        # Client-side only (no server round trip); `change` also fires when a handler opens a tab.
        for event in (tabs.select, tabs.change):
            event(None, None, None, js=RESIZE_PLOTS_JS)

        rec = built["recommend"]

        def header(cf):
            """The header's two status lines, for the CF model the new result was scored with."""
            return plain_status(state, cf), status_line(state, cf)

        page = Page(state, result_state, tabs, header=Refresh(header, [rec.controls.cf_model], [headline, status]))
        page.wire(built)
        load_first_example(demo, page, rec, notice, headline, status)
        add_api(state)
    # Only the gr.api endpoints (/compare, /inside, /same_films) are the designed API: the UI's events are
    # private (their named routes answer 404, see guard.py), rejected values are echoed briefly,
    # and every event waits in one queue with limit 1, so one handler runs at a time. At most
    # max_queue requests wait; the next are refused at once with guard.QUEUE_FULL. harden()
    # enables the queue itself.
    guard.harden(demo, max_queue=state.config.max_queue)
    return demo


def load_first_example(demo: gr.Blocks, page: Page, rec: recommend.RecommendTab, notice: gr.Markdown,
                       headline: gr.Markdown, status: gr.Markdown) -> None:
    """Page load: wait for the model, show the banner, pick a good first example and score it."""
    import gradio as gr

    state = page.state

    def on_load(progress=gr.Progress()):
        progress(0.05, desc="loading the model (first visit after start-up only)")
        state.pipeline()
        # One tiny scoring first (once per process), so the first result on screen does
        # not report the one-off cost of the first forward passes.
        progress(0.5, desc="warming up the model (first visit after start-up only)")
        core.warm_up(state)
        text = banner(state)
        return (gr.update(value=text, visible=bool(text)), status_line(state)) + recommend.first_example(state)

    demo.load(lambda: plain_status(state), None, headline)
    loaded = demo.load(on_load, None, [notice, status] + rec.first_example_outputs)
    rec.score_first_example(page, loaded)


def add_api(state: AppState) -> None:
    """The designed API, /compare, /inside and /same_films (in the open Blocks); the docstrings are its documentation."""
    import gradio as gr

    def compare(user_id: str, item_ids: str, cf_model: str = "") -> list[dict]:
        """Score candidates for a real user with and without CF tokens.

        user_id: a user id such as "1". item_ids: comma-separated item ids such as "1, 50, 100"
        (1 to 50, no duplicates). Returns one object per item, in the order given: id, title,
        warm (the item has >= 3 training interactions, the protocol's threshold), score_text (P(Yes) from the text-only
        prompt), score_cf (P(Yes) with the CF tokens injected; null without a projector) and
        delta = score_cf - score_text. The user's history is their last <= 10 interactions before
        the test period. cf_model (optional): which CF model makes the tokens, e.g. "mf",
        "lightgcn", "sasrec" (those trained in this app's checkpoints); empty = the default.
        """
        return compare_api(state, user_id, item_ids, cf_model)

    gr.api(compare, api_name="compare")

    def inside(user_id: str, item_id: str, cf_model: str = "") -> dict:
        """How much the LLM uses the CF tokens for one real user and one item (the Inside the LLM tab's numbers).

        user_id: a user id such as "1". item_id: one item id such as "50". cf_model (optional): as in
        /compare. Returns: score_cf, score_text; attention {cf_on, cf_off}: per layer, the answer
        position's attention share on [user slot, item slot, title, history, template] (groups);
        attribution: tokens, their group, gradient x input of logit(Yes) - logit(No), and each group's
        share of the total |attribution|; ablation: P(Yes) with the user / item / both tokens at the CF
        model's no-information vectors; logit_lens and nearest_input_words of both CF slots;
        neighbourhood: the projector's k=10 neighbourhood preservation over all items.
        """
        return inside_api(state, user_id, item_id, cf_model)

    gr.api(inside, api_name="inside")

    def same_films_endpoint(user_ids: str = "", item_ids: str = "", cf_model: str = "") -> dict:
        """The same films ranked for several real users, with and without CF tokens and by the CF model alone.

        user_ids: 2 to 5 comma-separated user ids such as "94, 738, 58"; empty = the default set (users the
        CF model sees as opposite tastes). item_ids: 3 to 20 comma-separated item ids; empty = the default set
        (popular warm films across genres). cf_model (optional): as in /compare. Returns films (id, title, in
        the order ranked), users (user, history, trained_vector, and per method "cf" / "text" / "alone": the
        scores per film in that order and their ranks, 1 = first), agreement per method (mean_rho: mean
        Spearman rho between two users' scores, lower = more personal; pair_rhos; mean_top_overlap: films two
        users share in their top k; k) and reading, one sentence generated from those numbers.
        """
        return same_films_api(state, user_ids, item_ids, cf_model)

    gr.api(same_films_endpoint, api_name="same_films")


def launch_kwargs() -> dict:
    """Theme and CSS (Gradio 6 takes them in launch()), and the request guard's middleware."""
    import gradio as gr

    # System fonts only: the app must not need the internet (no Google Fonts).
    theme = gr.themes.Soft(primary_hue="indigo", secondary_hue="orange", neutral_hue="slate",
                           font=["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"],
                           font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"])
    # guard.RequestGuard refuses or checks every Gradio route (bodies over 64 KB: 413 unread; named
    # calls only for the gr.api endpoints; no /run, no uploads); its lifespan bounds the sessions.
    return {"theme": theme, "css": CSS, "app_kwargs": guard.app_kwargs()}
