"""Warm vs cold tab: the evaluation table and chart read from ``assets/results.json`` (with the
paper's numbers beside them), the warm-vs-cold measurement of ``assets/inside.json``, and the
cold-start simulator (``simulator``: its own module, the one part of this tab that runs the model).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .. import inside
from ..cf import Backend, backend, method_colour, method_label, recipe_row, split_recipe_row
from ..config import DEFAULT_CF
from ..evaluate import SLICES
from . import simulator
from .page import Page, Refresh, Tab
from .state import AppState
from .views import empty_figure

# ------------------------------------------------------------------ evaluation

# The rows that tell the story, in the order a lecturer reads them: the LLM alone, the CF model
# alone (as shipped, and as the paper scores new users), and the two together: the default backend's,
# trained by the shipped recipe and by the paper's (issue 26: the paper's recipe keeps its row).
HEADLINE = ("text_only", *backend(DEFAULT_CF).result_keys, recipe_row(backend(DEFAULT_CF).collm_key, "paper"))

# What the paper reports, kept in one place so the page never quotes it differently from the README.
# Source: Zhang et al., "CoLLM: Integrating Collaborative Embeddings into Large Language Models for
# Recommendation" (arXiv 2310.19488), ML-1M with Vicuna-7B, AUC; as quoted in README.md § Results.
PAPER_REFERENCE = {
    "source": "Zhang et al., CoLLM, arXiv 2310.19488",
    "data": "ML-1M",
    "llm": "Vicuna-7B",
    "metric": "AUC",
    "auc": {"text_only": 0.7097, "mf": 0.6482, "collm": 0.7295, "lightgcn": 0.5959, "collm_lightgcn": 0.7100,
            "sasrec": 0.7078, "collm_sasrec": 0.7235},
    "labels": {"text_only": "TALLRec (text-only)", "mf": "MF", "collm": "CoLLM-MF", "lightgcn": "LightGCN",
               "collm_lightgcn": "CoLLM-LightGCN", "sasrec": "SASRec", "collm_sasrec": "CoLLM-SASRec"},
}

BEST_STYLE = "background-color: #b2f2bb; font-weight: 700;"
COLUMNS = ["method"] + [f"{s} {m}" for s in SLICES for m in ("AUC", "UAUC")]


def ordered_methods(results: dict | None) -> list[str]:
    """Every method of ``results``: the headline rows first, then the zero-shot LLM, then each other
    CF backend alone followed by its CoLLM (so the table reads in pairs, not in file order)."""
    methods = list((results or {}).get("methods") or {})
    first = [k for k in HEADLINE if k in methods]
    rest = [k for k in methods if k not in first]
    pairs = []

    def recipe_rows(collm: str) -> list[str]:  # "collm_x@paper" right after "collm_x"
        return [k for k in rest if (found := split_recipe_row(k)) and found[0] == collm]

    for key in rest:
        found = Backend.from_key(key)  # (its backend, whether CoLLM) or None
        recipe = split_recipe_row(key)
        if (found and found[1] and found[0].alone_key in rest) or (recipe and recipe[0] in rest):
            continue  # placed after its backend alone / after its shipped CoLLM row
        pairs.append(key)
        if found and not found[1] and found[0].collm_key in rest:
            pairs.append(found[0].collm_key)
            pairs += recipe_rows(found[0].collm_key)
        elif found and found[1]:
            pairs += recipe_rows(key)
    return first + pairs


def results_frame(results: dict | None, keys: list[str] | tuple[str, ...] | None = None) -> pd.DataFrame:
    """AUC / UAUC by method and slice; ``keys`` picks and orders the methods (default: all, ordered)."""
    if not results or not results.get("methods"):
        return pd.DataFrame(columns=COLUMNS)
    methods = results["methods"]
    rows = []
    for method in (ordered_methods(results) if keys is None else [k for k in keys if k in methods]):
        row = [method_label(method)]
        for s in SLICES:
            part = methods[method].get(s, {})
            row += [_num(part.get("auc")), _num(part.get("uauc"))]
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def best_cells(frame: pd.DataFrame) -> set[tuple[int, str]]:
    """(row position, column) of the best value of each metric column; ties are all best."""
    best = set()
    for col in frame.columns[1:]:
        values = pd.to_numeric(frame[col], errors="coerce")
        if values.notna().any():
            best |= {(n, col) for n, v in enumerate(values) if v == values.max()}
    return best


def headline_table(results: dict | None):
    """The headline rows with the best per column in bold on green (a pandas Styler, which
    gr.Dataframe displays with its cell styles)."""
    frame = results_frame(results, HEADLINE)
    return styled(frame, best_cells(frame))


def styled(frame: pd.DataFrame, best: set[tuple[int, str]] | None = None):
    """``frame`` with every metric at 4 decimals (0.7490, not 0.749) and the ``best`` cells marked."""

    def style(column: pd.Series) -> list[str]:
        return [BEST_STYLE if (n, column.name) in (best or ()) else "" for n in range(len(column))]

    return frame.style.apply(style, axis=0).format(lambda v: "—" if v is None or v != v else f"{v:.4f}",
                                                   subset=list(frame.columns[1:]))


def _metric(results: dict, key: str, part: str, metric: str) -> float | None:
    return _num(results["methods"].get(key, {}).get(part, {}).get(metric))


def _counts(results: dict) -> tuple[int | None, int | None, int | None]:
    """(all rows, cold rows, cold rows of users with little or no training history) of the test split."""
    counts = results.get("protocol", {}).get("counts", {})
    first = next(iter(results["methods"].values()))
    rows = counts.get("rows", first.get("all", {}).get("n"))
    cold = counts.get("cold", first.get("cold", {}).get("n"))
    return rows, cold, counts.get("cold_user")


def results_reading(results: dict | None) -> str:
    """Two or three sentences that read the headline rows, written from the numbers themselves
    (so they stay true when ``assets/results.json`` changes): CoLLM against the text-only model
    and MF on warm rows, who leads on all rows and why (the cold share, MF's fold-in), and the
    text-only model's per-user AUC against chance."""
    if not results or not results.get("methods"):
        return "No evaluation results yet: `python -m collm_demo evaluate` writes them (how: the section below)."
    names = {"text_only": "the text-only model", "mf": "MF", "mf_no_foldin": "MF without fold-in", "collm": "CoLLM"}
    sentences = []

    collm_warm = _metric(results, "collm", "warm", "auc")
    others = [(names[k], v) for k in ("text_only", "mf") if (v := _metric(results, k, "warm", "auc")) is not None]
    if collm_warm is not None and others:
        against = " and ".join(f"{v:.4f} for {name}" for name, v in others)
        above = [name for name, v in others if v >= collm_warm]
        if not above:
            sentences.append(f"On **warm** rows (user and movie both have training history) **CoLLM ranks best**: "
                             f"AUC {collm_warm:.4f}, against {against} — the LLM with the CF tokens beats either "
                             "source alone.")
        else:
            sentences.append(f"On **warm** rows CoLLM reaches AUC {collm_warm:.4f}, against {against}: "
                             f"it does not beat {' or '.join(above)} there.")

    scored = {k: v for k in HEADLINE if (v := _metric(results, k, "all", "auc")) is not None}
    if scored:
        leader = max(scored, key=scored.get)
        rows, cold, cold_user = _counts(results)
        share = (f"{round(100 * cold / rows)} % of the test rows are cold" if rows and cold is not None else
                 "most test rows are cold")
        if cold and cold_user is not None:
            share += (", almost all" if cold_user >= 0.9 * cold else ", mostly" if cold_user >= 0.5 * cold
                      else ", some") + " of them from users with little or no training history"
        if leader == "mf" and "collm" in scored:
            text = (f"On **all** rows the tuned **MF with fold-in leads** (AUC {scored['mf']:.4f} vs CoLLM "
                    f"{scored['collm']:.4f}): {share}, and MF folds those users in from their ratings")
            if "mf_no_foldin" in scored:
                relation = "below" if scored["mf_no_foldin"] < scored["collm"] else "still above"
                text += f"; without fold-in MF drops to {scored['mf_no_foldin']:.4f}, {relation} CoLLM"
            sentences.append(text + ".")
        else:
            runner = sorted((v, k) for k, v in scored.items() if k != leader)
            after = f" (next: {names.get(runner[-1][1], method_label(runner[-1][1]))}, {runner[-1][0]:.4f})" if runner else ""
            sentences.append(f"On **all** rows {names.get(leader, method_label(leader))} leads with AUC {scored[leader]:.4f}{after}; {share}.")

    text_uauc = _metric(results, "text_only", "all", "uauc")
    if text_uauc is not None:
        collm_uauc = _metric(results, "collm", "all", "uauc")
        lift = f"; the CF tokens lift CoLLM's to {collm_uauc:.4f}" if collm_uauc is not None else ""
        if text_uauc < 0.5:
            sentences.append(f"The text-only model's per-user AUC (UAUC) is **{text_uauc:.4f}, below chance (0.5)**: "
                             "from titles alone it learned which films are liked *in general* (their appeal) and "
                             "ranks every user's films by that, so within one user it orders them worse than a coin "
                             f"toss{lift}.")
        elif text_uauc < 0.55:
            sentences.append(f"The text-only model's per-user AUC (UAUC) is {text_uauc:.4f}, barely above chance: it "
                             f"ranks films by their general appeal, the same for every user{lift}.")
        else:
            sentences.append(f"The text-only model's per-user AUC (UAUC) is {text_uauc:.4f}{lift}.")
    # one bullet a sentence: a projected page is scanned, not read as a paragraph
    return "\n".join(f"- {sentence}" for sentence in sentences)


def terms_text(warm_min: int) -> str:
    """One plain sentence for each word of the headline a student may not know."""
    return (f"**Warm** = the user and the movie each have at least {warm_min} training interactions; **cold** = "
            "the rest. **UAUC** (user AUC) = the AUC within each user's own test movies, averaged over users: does "
            "the model order *this user's* films well, not just popular films above unpopular ones? **Fold-in** = "
            "a user who is new since training gets an MF vector fitted on the spot from their earlier ratings, with "
            "the movie vectors held fixed; *MF without fold-in* leaves such users at a no-information vector, as "
            "the paper does. Best per column in **bold on green**; 0.5 is chance.")


PAPER_HEADLINE = ("text_only", "mf", "collm")


def paper_reference(results: dict | None, keys: tuple[str, ...] = PAPER_HEADLINE,
                    reference: dict = PAPER_REFERENCE) -> str:
    """The paper's reference row (its AUC for ``keys``) over ours on all rows, as a small table; for
    the headline keys also one sentence, generated from both, on whether the paper's order holds here."""
    auc, labels = reference["auc"], reference["labels"]
    keys = tuple(k for k in keys if k in auc)
    have = bool(results and results.get("methods"))
    no_fold = _metric(results, "mf_no_foldin", "all", "auc") if have else None
    lines = ["| | " + " | ".join(labels[k] for k in keys) + " |", "|---|" + "---|" * len(keys),
             f"| **paper** ({reference['data']}, {reference['llm']}) | " + " | ".join(f"{auc[k]:.4f}" for k in keys)
             + " |"]
    if have:
        def cell(key: str) -> str:
            value = _metric(results, key, "all", "auc")
            if value is None:
                return "—"
            # the paper leaves new users unfolded: that MF too, next to the shipped one
            return f"{value:.4f} · {no_fold:.4f} without fold-in" if key == "mf" and no_fold is not None else f"{value:.4f}"
        lines.append("| **here** (all rows) | " + " | ".join(cell(k) for k in keys) + " |")
    title = "The paper's reference row" if keys == PAPER_HEADLINE else "The paper's other backends"
    lines = [f"**{title}** ({reference['source']}; {reference['metric']} on all test rows):", ""] + lines
    if keys != PAPER_HEADLINE or not all(k in auc for k in PAPER_HEADLINE):
        return "\n".join(lines)
    paper_best = max(PAPER_HEADLINE, key=auc.get)
    sentence = (f"With {reference['llm']} the paper has {labels[paper_best]} on top"
                + (" (CoLLM above both its sources)" if paper_best == "collm" else ""))
    collm, mf = (_metric(results, k, "all", "auc") for k in ("collm", "mf")) if have else (None, None)
    if collm is not None and mf is not None:
        llm = str(results.get("protocol", {}).get("llm", "the embedded LLM")).split(":")[-1].split("/")[-1]
        if collm > mf:
            sentence += f"; here, with {llm}, CoLLM is above MF too"
        elif no_fold is not None and collm > no_fold:
            sentence += f"; here, with {llm}, CoLLM is above MF only when new users are scored the paper's way"
        else:
            sentence += f"; here, with {llm}, CoLLM stays below MF"
    lines += ["", sentence + ". Different data, split and model size: compare the order, not the numbers."]
    return "\n".join(lines)


def _num(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(value) else round(value, 4)


def results_figure(results: dict | None, keys: list[str] | tuple[str, ...] | None = None) -> go.Figure:
    """AUC and UAUC by slice, one bar per method (``keys``: which, in order; default all)."""
    if not results or not results.get("methods"):
        return empty_figure("No evaluation results yet (see the note above).", height=300)
    first = next(iter(results["methods"].values()))
    methods = {k: results["methods"][k] for k in (ordered_methods(results) if keys is None else keys)
               if k in results["methods"]}
    labels = [f"{s}<br>(n={first.get(s, {}).get('n', '?')})" for s in SLICES]
    fig = make_subplots(1, 2, subplot_titles=("AUC (all rows pooled)", "UAUC (mean per-user AUC)"),
                        horizontal_spacing=0.08)
    values = []
    for col, metric in enumerate(("auc", "uauc"), 1):
        for method, slices in methods.items():
            ys = [_num(slices.get(s, {}).get(metric)) for s in SLICES]
            values += [y for y in ys if y is not None]
            fig.add_trace(go.Bar(x=labels, y=ys, name=method_label(method),
                                 marker_color=method_colour(method), showlegend=col == 1,
                                 legendgroup=method, text=[f"{y:.3f}" if y is not None else "n/a" for y in ys],
                                 # many backends: numbers on hover and in the table, not on every bar
                                 textposition="outside" if len(methods) <= 5 else "none", textfont_size=10,
                                 hovertemplate="%{x}<br>%{fullData.name}: %{y:.4f}<extra></extra>"), 1, col)
        fig.add_hline(y=0.5, line_dash="dot", line_color="#888", row=1, col=col)
    low = min(values + [0.5]) - 0.05
    high = max(values + [0.5]) + 0.06
    fig.update_yaxes(range=[max(0.0, low), min(1.05, high)])
    fig.update_layout(barmode="group", height=430, template="plotly_white",
                      legend=dict(orientation="h", y=-0.22, x=0), margin=dict(l=10, r=10, t=40, b=10))
    return fig


def results_note(state: AppState, results: dict | None) -> str:
    path = state.config.results_path
    if not results:
        return (f"No evaluation results at `{path}`. Produce them with `python -m collm_demo evaluate` "
                "(AUC/UAUC of MF, zero-shot, text-only and CoLLM on the test split, all/warm/cold), then reload.")
    proto = results.get("protocol", {})
    counts = proto.get("counts", {})
    parts = [f"From `{path}`: {proto.get('data', '?')} test split, {proto.get('rows', '?')} rows scored"]
    if proto.get("subset"):
        parts.append(" — **a subset**, so numbers are noisy")
    if counts:
        parts.append(f" (whole test split: {counts.get('rows', '?')} rows, {counts.get('warm', '?')} warm, "
                     f"{counts.get('cold', '?')} cold)")
    parts.append(f"; LLM {proto.get('llm', '?')}. ")
    parts.append(f"Warm = the user and the item each have at least {state.catalog.warm_min} training interactions. "
                 "UAUC averages per-user AUCs over users with both liked and disliked test items, so it asks "
                 "“does the model rank *this user's* movies well?”. The dotted line is chance (0.5).")
    return "".join(parts)


# ------------------------------------------------- inside the LLM: warm vs cold, measured

INSIDE_HEIGHT = 400


def measured_text(report: dict | None) -> str:
    """The warm-vs-cold measurement of ``python -m collm_demo inside`` (assets/inside.json), in words."""
    if not report:
        return ("No measurement yet: `python -m collm_demo inside` writes `assets/inside.json` (attention, "
                "attribution and ablation on seeded test rows, warm vs cold, with bootstrap intervals).")
    p = report["protocol"]
    partial = (f" (asked {p['rows_asked']}; the {p['max_minutes']}-minute budget stopped it)"
               if p.get("rows_asked", p["rows"]) > p["rows"] else "")
    counts = {s: report["slices"][s]["attention_cf_mean"]["n"] for s in ("warm_item", "cold_item", "warm_user",
                                                                         "cold_user")}
    return (f"**Measured on {p['rows']} test rows**{partial}, seed {p['seed']}, {p['sampling']} "
            f"(warm items {counts['warm_item']}, cold items {counts['cold_item']}; warm users {counts['warm_user']}, "
            f"cold users {counts['cold_user']}). {report['finding']} Intervals: {p['bootstrap']}.")


def measured_table(report: dict | None) -> pd.DataFrame:
    """One row per measure, warm vs cold side by side, each cell 'mean [95 % CI]' (the README's
    table): five rows a projected page can show whole, not a long list to scroll."""
    if not report:
        return pd.DataFrame(columns=list(inside.TABLE_COLUMNS))
    return pd.DataFrame(inside.table_rows(report), columns=list(inside.TABLE_COLUMNS))


def measured_figure(report: dict | None) -> go.Figure:
    if not report:
        return empty_figure("No measurement yet (python -m collm_demo inside).", height=INSIDE_HEIGHT)
    fig = go.Figure()
    colours = {"warm_item": "#4C6EF5", "cold_item": "#F08C00", "warm_user": "#15AABF", "cold_user": "#E8590C"}
    layers = list(range(1, report["layers"] + 1))
    for s, colour in colours.items():
        m = report["slices"][s]["attention_cf_by_layer"]
        if m["mean"] is None:
            continue
        dash = "solid" if s.endswith("item") else "dot"
        fig.add_trace(go.Scatter(x=layers + layers[::-1], y=m["high"] + m["low"][::-1], fill="toself",
                                 fillcolor=colour, opacity=0.15, line=dict(width=0), showlegend=False,
                                 hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=layers, y=m["mean"], mode="lines", name=f"{s.replace('_', ' ')}s (n={m['n']})",
                                 line=dict(color=colour, dash=dash, width=2)))
    fig.update_layout(height=INSIDE_HEIGHT, template="plotly_white", margin=dict(l=10, r=10, t=40, b=10),
                      title=dict(text="Attention share on the two CF slots by layer (95% bootstrap bands)",
                                 font_size=13),
                      xaxis_title="layer", yaxis_title="share of the answer position's attention",
                      legend=dict(orientation="h", y=-0.2, x=0))
    return fig


# ------------------------------------------------------------------------- the tab

@dataclass(frozen=True)
class WarmColdTab(Tab):
    """The measured answer (built once from the shipped files: nothing in it changes) and the
    cold-start simulator, which follows every scoring."""

    simulator: simulator.SimulatorPanel

    def after_scoring(self, page: Page) -> Refresh:
        return self.simulator.after_scoring(page)

    def wire(self, page: Page) -> None:
        self.simulator.wire(page)


def build(state: AppState) -> WarmColdTab:
    import gradio as gr

    gr.Markdown("Does the CF information help where it exists (warm) and not where it does not (cold)? "
                "First the measured answer on the test split, then a simulator you can play with.",
                elem_classes=["lead"])
    gr.Markdown("### The result on the test split")
    results = state.assets.results()
    gr.Markdown(results_reading(results), elem_id="results-reading")
    # ids kept from the full table and chart (the browser test looks for them): both now show the headline rows
    gr.Dataframe(headline_table(results), interactive=False, elem_id="results-eval",
                 label="Headline: AUC / UAUC on all, warm and cold test rows (best per column in green)")
    gr.Markdown(terms_text(state.catalog.warm_min), elem_classes=["note"], elem_id="results-terms")
    gr.Markdown(paper_reference(results), elem_classes=["note"], elem_id="results-paper")
    # no label badge: it would sit on the left subplot's title
    gr.Plot(results_figure(results, HEADLINE), show_label=False, elem_id="results-chart")
    n_methods = len((results or {}).get("methods") or {})
    with gr.Accordion(f"All {n_methods} methods: every CF backend alone and inside CoLLM, the zero-shot LLM, how "
                      "they were measured", open=False, elem_id="results-more"):
        gr.Markdown(results_note(state, results), elem_classes=["note"])
        gr.Dataframe(styled(results_frame(results)), interactive=False, elem_id="results-all",
                     label="AUC / UAUC by method and slice (each backend alone, then with CoLLM)")
        gr.Plot(results_figure(results), show_label=False, elem_id="results-all-chart")
        others = tuple(k for k in PAPER_REFERENCE["auc"] if k not in PAPER_HEADLINE)
        gr.Markdown(paper_reference(results, others), elem_classes=["note"], elem_id="results-paper-more")
    gr.Markdown("### Does the LLM use the CF tokens more for warm items?")
    report = state.assets.inside()
    gr.Markdown(measured_text(report), elem_classes=["note"], elem_id="inside-measured")
    # the table full width (five rows, cells "mean [CI]"), the chart under it: side by side the
    # table's columns scrolled out of sight at 1280×800
    gr.Dataframe(measured_table(report), interactive=False, wrap=True,
                 column_widths=["28%", "18%", "18%", "18%", "18%"],
                 label="Attention, attribution and ablation: warm vs cold (mean [95 % bootstrap CI])",
                 elem_id="inside-measured-table")
    gr.Plot(measured_figure(report), label="CF-slot attention by layer")
    return WarmColdTab(simulator=simulator.build(state))
