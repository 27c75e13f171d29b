"""The Warm vs cold tab's headline: rows, best-per-column marks, the generated reading and the
paper's reference row, on small hand-made results (no model, no server: pure functions)."""

from __future__ import annotations

import copy

import pytest

from collm_demo.ui import warm_cold


def _slices(all_auc, all_uauc, warm_auc, warm_uauc, cold_auc, cold_uauc, n=(100, 20, 80)):
    return {"all": {"auc": all_auc, "uauc": all_uauc, "n": n[0]},
            "warm": {"auc": warm_auc, "uauc": warm_uauc, "n": n[1]},
            "cold": {"auc": cold_auc, "uauc": cold_uauc, "n": n[2]}}


@pytest.fixture
def results() -> dict:
    """Shaped like assets/results.json, numbers chosen by hand (the shipped story: CoLLM best on warm
    rows, fold-in MF best on all rows, text-only UAUC below chance)."""
    return {"protocol": {"llm": "embedded:Tiny-1M", "counts": {"rows": 100, "warm": 20, "cold": 80, "cold_user": 78}},
            "methods": {"zero_shot": _slices(0.48, 0.52, 0.45, 0.55, 0.49, 0.51),
                        "sasrec": _slices(0.73, 0.68, 0.82, 0.74, 0.72, 0.65),
                        "text_only": _slices(0.69, 0.44, 0.81, 0.38, 0.67, 0.46),
                        "collm_sasrec": _slices(0.72, 0.58, 0.84, 0.62, 0.70, 0.56),
                        "mf": _slices(0.75, 0.70, 0.82, 0.79, 0.74, 0.65),
                        "mf_no_foldin": _slices(0.72, 0.72, 0.82, 0.79, 0.70, 0.68),
                        "collm": _slices(0.73, 0.61, 0.85, 0.63, 0.71, 0.58)}}


def test_headline_rows_in_story_order_and_the_rest_in_pairs(results):
    frame = warm_cold.results_frame(results, warm_cold.HEADLINE)
    assert list(frame["method"]) == [warm_cold.method_label(k) for k in ("text_only", "mf", "mf_no_foldin", "collm")]
    # the full table (the collapsed section): headline first, then zero-shot, then each backend before its CoLLM
    assert warm_cold.ordered_methods(results) == ["text_only", "mf", "mf_no_foldin", "collm", "zero_shot", "sasrec",
                                                  "collm_sasrec"]
    assert len(warm_cold.results_figure(results, warm_cold.HEADLINE).data) == 2 * 4


def test_best_per_column_is_marked_ties_included(results):
    frame = warm_cold.results_frame(results, warm_cold.HEADLINE)
    best = warm_cold.best_cells(frame)
    assert (1, "all AUC") in best and (3, "warm AUC") in best and (2, "all UAUC") in best
    assert {(1, "warm UAUC"), (2, "warm UAUC")} <= best  # MF with and without fold-in tie on warm rows
    assert not any(n == 0 for n, _ in best)  # text-only is best nowhere here
    html = warm_cold.headline_table(results).to_html()
    assert html.count(warm_cold.BEST_STYLE.split(";")[0]) == 1  # one CSS rule lists every best cell


def test_reading_says_what_the_numbers_say(results):
    text = warm_cold.results_reading(results)
    assert "CoLLM ranks best" in text and "0.8500" in text  # warm rows: above text-only and MF
    assert "MF with fold-in leads" in text and "0.7500 vs CoLLM 0.7300" in text
    assert "80 % of the test rows are cold, almost all of them from users" in text
    assert "without fold-in MF drops to 0.7200, below CoLLM" in text
    assert "0.4400, below chance" in text and "general" in text


def test_reading_changes_when_two_numbers_swap(results):
    swapped = copy.deepcopy(results)
    m = swapped["methods"]
    # CoLLM and MF swap their all-rows AUC; text-only beats CoLLM on warm rows
    m["mf"]["all"]["auc"], m["collm"]["all"]["auc"] = m["collm"]["all"]["auc"], m["mf"]["all"]["auc"]
    m["text_only"]["warm"]["auc"] = 0.86
    text = warm_cold.results_reading(swapped)
    assert "MF with fold-in leads" not in text and "CoLLM leads with AUC 0.7500" in text
    assert "CoLLM ranks best" not in text and "it does not beat the text-only model" in text
    m["text_only"]["all"]["uauc"] = 0.53
    assert "barely above chance" in warm_cold.results_reading(swapped)


def test_reading_without_results_or_with_some_methods_missing(results):
    assert "No evaluation results yet" in warm_cold.results_reading(None)
    del results["methods"]["collm"], results["methods"]["mf_no_foldin"]
    text = warm_cold.results_reading(results)  # nothing to compare CoLLM with: no claim about it
    assert "CoLLM" not in text and "MF leads with AUC 0.7500" in text


def test_paper_reference_row_and_its_sentence(results):
    text = warm_cold.paper_reference(results)
    ref = warm_cold.PAPER_REFERENCE["auc"]
    assert f"| {ref['text_only']:.4f} | {ref['mf']:.4f} | {ref['collm']:.4f} |" in text
    assert "| **here** (all rows) | 0.6900 | 0.7500 · 0.7200 without fold-in | 0.7300 |" in text
    assert "Tiny-1M, CoLLM is above MF only when new users are scored the paper's way" in text
    results["methods"]["collm"]["all"]["auc"] = 0.76
    assert "Tiny-1M, CoLLM is above MF too" in warm_cold.paper_reference(results)
    others = warm_cold.paper_reference(results, ("sasrec", "collm_sasrec"))
    assert "other backends" in others and "| 0.7300 | 0.7200 |" in others and "compare the order" not in others


def test_terms_explain_uauc_and_fold_in_in_one_sentence_each():
    text = warm_cold.terms_text(3)
    assert "at least 3 training interactions" in text
    assert "**UAUC** (user AUC) = the AUC within each user's own test movies" in text
    assert "**Fold-in** = a user who is new since training gets an MF vector" in text
