"""The Gradio app: one module per tab; what they share: ``state`` (config + ``hub`` models +
``catalog`` users/items + ``assets`` files), ``core`` (logic), ``values`` (what tabs pass each
other), ``views`` (presentation), ``memo`` (argument-keyed caches).

``build_demo()`` returns the ``gr.Blocks``; ``launch_kwargs()`` the theme and CSS that
Gradio 6 takes in ``launch()``. Handlers are plain functions (see each tab module) so
tests can call them without a server. Tabs never import each other. The engine
(``collm_demo`` outside ``ui``) never imports gradio.
"""

from __future__ import annotations

import functools

from ..errors import CoLLMError, InputError
from . import core, embedding, explain, guard, recommend, warm_cold
from . import inside as inside_view
from .state import AppState, get_state
from .views import cf_label

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
#results-table span.text, #history-table span.text, #compare-table span.text
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


def gr_error(fn):
    """The one place a user-facing error (any ``CoLLMError``) becomes gr.Error (a toast; the event stops)."""
    import gradio as gr

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CoLLMError as err:
            raise gr.Error(str(err), print_exception=False) from err
    return wrapper


@gr_error
def compare_api(state: AppState, user_id: str, item_ids: str, cf_model: str | None = None) -> list[dict]:
    """The logic behind the /compare endpoint (raises gr.Error on bad input)."""
    return core.compare(state, user_id, item_ids, cf_model)


@gr_error
def inside_api(state: AppState, user_id: str, item_id: str, cf_model: str | None = None) -> dict:
    """The logic behind the /inside endpoint (raises gr.Error on bad input)."""
    return inside_view.inside_json(state, user_id, item_id, cf_model)


def plain_status(state: AppState, cf: str | None = None) -> str:
    """The header's one line in plain words (file paths and flags are in the details fold)."""
    pipe = state.pipeline(cf or None)
    llm = pipe.llm.name.split(":")[-1].split("/")[-1]
    if pipe.has_projector:
        tokens = f"with {cf_label(pipe)} tokens"
    else:
        tokens = "text only (no CF tokens: " + ("the checkpoints were refused)" if state.hub.refusal else "none trained)")
    return f"Running **{llm}** {tokens} on MovieLens-100K, on the {pipe.model.device.type.upper()}."


def status_line(state: AppState, cf: str | None = None) -> str:
    pipe = state.pipeline(cf or None)
    cf = pipe.cf
    backends = state.hub.backends()
    parts = [f"LLM `{pipe.llm.name}`", f"data `{state.dataset.name}`",
             f"CF model {cf_label(pipe) + ', ' + str(cf.dim) + '-dim vectors' if cf is not None else '—'}"
             + (f" (also: {', '.join(others)})" if (others := [b for b in backends if b != pipe.cf_name]) else ""),
             f"LoRA {'✓' if pipe.has_lora else '✗'}", f"projector {'✓' if pipe.has_projector else '✗'}",
             f"checkpoints `{state.config.checkpoint_dir}`" + (" (refused)" if state.hub.refusal is not None else ""),
             f"runs on {pipe.model.device.type} in " + ("bf16 autocast" if pipe.model.runtime.bf16 else "float32")
             + (f" (chosen by auto: {auto_reason(pipe.model.runtime)})" if state.config.precision == "auto" else "")]
    return " · ".join(parts)


def auto_reason(runtime) -> str:
    if runtime.bf16:
        return "this hardware computes bf16 natively"
    return "no native bf16 here" if runtime.device.type == "cpu" else "float32 on this device"


def banner(state: AppState) -> str:
    notice = state.hub.notice
    if not notice:
        return ""
    if state.hub.refusal is not None:  # the notice names the refused file and the reason
        return (f"⚠️ **The checkpoints were refused.** {notice} Scores still work (the plain LLM, no CF tokens); columns "
                "that need the checkpoints show “—”.")
    return (f"⚠️ **Not everything is trained.** {notice} Scores still work in the mode the loaded checkpoints "
            "allow; columns that need missing parts show “—”.")


def build_demo(state: AppState | None = None):
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
            with gr.Tab("Recommend", id="recommend", elem_id="tab-recommend"):
                rec = recommend.build(state)
            with gr.Tab("Embedding space", id="embedding", elem_id="tab-embedding"):
                emb = embedding.build(state)
            with gr.Tab("Warm vs cold", id="warmcold", elem_id="tab-warmcold"):
                wc = warm_cold.build(state)
            with gr.Tab("How it works", id="how", elem_id="tab-how"):
                exp = explain.build(state)
            with gr.Tab("Inside the LLM", id="inside", elem_id="tab-inside"):
                ins = inside_view.build(state)

        # A plot updated while its tab is hidden is laid out at plotly's default 700 px (its
        # container has no size then) and Gradio only resizes it when its value changes, so after a
        # CF-model switch the map filled ~55 % of its width and the simulator chart overflowed its
        # box (its last point cut off). Gradio's plots are responsive (they listen to window
        # resizes): one resize event once the newly shown tab has its size fixes every plot in it.
        # Client-side only (no server round trip); `change` also fires when a handler opens a tab.
        for event in (tabs.select, tabs.change):
            event(None, None, None, js=RESIZE_PLOTS_JS)

        scored, render, render_out = recommend.wire(state, rec, result_state, gr_error)
        map_fn, map_in, map_out = embedding.wire(state, emb, result_state)
        exp_fn, exp_in, exp_out = explain.wire(state, exp, result_state, gr_error)
        sim_fn, sim_in, sim_out = warm_cold.wire(state, wc, result_state, gr_error)
        ins_fn, ins_in, ins_out = inside_view.wire(state, ins, result_state, gr_error, tabs, (sim_fn, sim_in, sim_out))

        def after_render(chain):
            """After each scoring, bring the other tabs (and the header's CF model) up to date."""
            chain = chain.then(lambda cf: (plain_status(state, cf), status_line(state, cf)), rec["cf_model"],
                               [headline, status])
            chain = chain.then(map_fn, map_in, map_out)
            chain = chain.then(exp_fn, exp_in, exp_out)
            chain = chain.then(ins_fn, ins_in, ins_out)  # only the candidate list: the look itself is on demand
            return chain.then(sim_fn, sim_in, sim_out)

        for chain in scored:  # the Score button and the CF-model selector
            after_render(chain)

        # Page load: wait for the model, show the banner, pick a good first example and score it.
        def on_load(progress=gr.Progress()):
            progress(0.05, desc="loading the model (first visit after start-up only)")
            state.pipeline()
            # One tiny scoring first (once per process), so the first result on screen does
            # not report the one-off cost of the first forward passes.
            progress(0.5, desc="warming up the model (first visit after start-up only)")
            core.warm_up(state)
            user = state.catalog.default_user()
            table, note = recommend.load_history(state, "user", user)
            cands = recommend.user_candidates(state, user, recommend.DEFAULT_SET_SIZE)  # = the button's set
            text = banner(state)
            # The CF selector again, now that the model has loaded: a refusal found only while
            # reading weights (a projector of the wrong shape) must not leave its backends offered.
            choices = state.hub.backend_choices()
            return (gr.update(value=text, visible=bool(text)), status_line(state), user, table, note,
                    gr.update(choices=recommend.history_choices(state, table), value=[]), cands,
                    gr.update(choices=choices, value=choices[0][1], interactive=len(choices) > 1))

        @gr_error
        def initial_score(source, user, table, candidates, cf, progress=gr.Progress()):
            return recommend.score(state, source, user, table, candidates, progress=progress, cf=cf)

        demo.load(lambda: plain_status(state), None, headline)
        loaded = demo.load(on_load, None, [notice, status, rec["user"], rec["history"], rec["user_md"],
                                           rec["remove_items"], rec["candidates"], rec["cf_model"]])
        first = loaded.then(initial_score, [rec["source"], rec["user"], rec["history"], rec["candidates"],
                                            rec["cf_model"]], result_state)
        after_render(first.success(render, [result_state, rec["sort_by"], rec["inject"]], render_out))

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
    # Only the gr.api endpoints (/compare, /inside) are the designed API: the UI's events are
    # private (their named routes answer 404, see guard.py), rejected values are echoed briefly,
    # and every event waits in one queue with limit 1, so one handler runs at a time. At most max_queue requests wait; the next are
    # refused at once with Gradio's "queue is full" error (a clear "busy, try again").
    guard.harden(demo)
    demo.queue(default_concurrency_limit=1, max_size=state.config.max_queue)
    return demo


def launch_kwargs() -> dict:
    """Theme and CSS (Gradio 6 takes them in launch()), and the request guard's middleware."""
    import gradio as gr

    # System fonts only: the app must not need the internet (no Google Fonts).
    theme = gr.themes.Soft(primary_hue="indigo", secondary_hue="orange", neutral_hue="slate",
                           font=["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"],
                           font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"])
    # guard.RequestGuard: request bodies over 64 KB get 413 unread; named calls only for /compare
    return {"theme": theme, "css": CSS, "app_kwargs": guard.app_kwargs()}
