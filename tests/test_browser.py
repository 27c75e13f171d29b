"""The page in headless Chromium: pick a user and candidates, score, toggle injection, visit tabs.

Screenshots go to tests/screenshots/ (git-ignored). Needs /usr/bin/chromium
(``apt-get install chromium``) and the playwright Python package; skipped without them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from _launch import CHROMIUM, CHROMIUM_ARGS

pytestmark = [pytest.mark.integration, pytest.mark.browser]

LOAD_TIMEOUT = 180_000  # ms: the first page load waits for the model and scores an example
STEP_TIMEOUT = 120_000
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


IDLE_JS = "() => document.querySelectorAll('[data-testid=status-tracker]:not(.hide)').length === 0"


def wait_idle(page) -> None:
    """Wait until no event is running (the scoring chain updates the other tabs after the table).
    Leaving while the server still computes would also make the interpreter abort at exit."""
    page.wait_for_timeout(300)
    page.wait_for_function(IDLE_JS, timeout=STEP_TIMEOUT)


@pytest.fixture()
def page(browser, app_url):
    context = browser.new_context(viewport={"width": 1360, "height": 1000})
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda err: page.errors.append(str(err)))
    page.goto(app_url, wait_until="domcontentloaded")
    page.wait_for_function("() => (document.querySelector('#summary')?.innerText || '').includes('Top picks')",
                           timeout=LOAD_TIMEOUT)
    yield page
    wait_idle(page)
    context.close()


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def summary(page) -> str:
    return page.locator("#summary").inner_text()


def wait_summary(page, text: str) -> None:
    page.wait_for_function(f"() => (document.querySelector('#summary')?.innerText || '').includes({text!r})",
                           timeout=STEP_TIMEOUT)


def table_rows(page, elem_id: str) -> int:
    """Data rows of a gr.Dataframe (Gradio 6 draws them as div.virtual-row)."""
    return page.locator(f"#{elem_id} .virtual-row").count()


def test_recommend_flow(page, real_state):
    assert "user" in summary(page)
    shot(page, "01_first_load")

    # pick another warm user with test items through the searchable dropdown
    default = real_state.catalog.default_user()
    user = next(u for _, u in real_state.catalog.user_choices()
                if u != default and real_state.catalog.users[u].warm and real_state.catalog.users[u].n_test >= 5)
    box = page.locator("#user-dropdown input")
    box.click()
    box.fill("")
    box.press_sequentially(f"user {user} ")
    option = page.locator(f'[role=option][aria-label^="user {user} ·"]')
    option.first.click()
    page.wait_for_function(f"() => document.body.innerText.includes('User {user}:')", timeout=STEP_TIMEOUT)
    wait_summary(page, "Press Score candidates")  # the previous user's results are cleared

    # one-click candidate set, then score
    page.locator("#set-popular").click()
    page.wait_for_function("() => document.querySelectorAll('#candidates .token').length == 20",
                           timeout=STEP_TIMEOUT)
    page.locator("#score-btn").click()
    wait_summary(page, f"user {user}")
    wait_summary(page, "Top picks — CoLLM")
    page.wait_for_function("() => document.querySelectorAll('#results-table .virtual-row').length == 20",
                           timeout=STEP_TIMEOUT)
    headers = page.locator("#results-table thead").inner_text()
    for column in ("without CF", "with CF", "rank w/ CF", "truth"):
        assert column in headers
    # the bar chart of differences is drawn, one bar per candidate
    page.wait_for_selector("#delta-chart .js-plotly-plot", timeout=STEP_TIMEOUT)
    assert page.locator("#delta-chart .barlayer .point").count() == 20
    # prompts with the two CF slots highlighted
    assert page.locator("#prompt-cf .slot-user").count() == 1
    assert page.locator("#prompt-cf .slot-item").count() == 1
    assert page.locator("#prompt-text .slot").count() == 0

    # toggle injection: the ranking switches to the text-only score, and back
    page.locator("#inject input[type=checkbox]").click()
    wait_summary(page, "Top picks — text-only")
    assert page.locator("#sort-by input[value='score without CF tokens']").is_checked()
    assert "used for the ranking" in page.locator("#prompt-text").inner_text()
    shot(page, "02_injection_off")
    page.locator("#inject input[type=checkbox]").click()
    wait_summary(page, "Top picks — CoLLM")
    assert "used for the ranking" in page.locator("#prompt-cf").inner_text()
    shot(page, "03_recommend")
    assert not page.errors, page.errors


def test_other_tabs(page):
    page.get_by_role("tab", name="Embedding space").click()
    page.wait_for_selector("#embedding-map .js-plotly-plot", timeout=STEP_TIMEOUT)
    page.wait_for_function("() => document.querySelector('#embedding-map').innerText.includes('candidates')",
                           timeout=STEP_TIMEOUT)
    assert table_rows(page, "nearest-words") == 8
    shot(page, "04_embedding_space")

    page.get_by_role("tab", name="Warm vs cold").click()
    page.wait_for_selector("#results-chart .js-plotly-plot", timeout=STEP_TIMEOUT)
    assert table_rows(page, "results-eval") >= 1
    page.locator("#sim-btn").click()
    page.wait_for_function("() => document.body.innerText.includes('text-only score stays')", timeout=STEP_TIMEOUT)
    shot(page, "05_warm_vs_cold")

    page.get_by_role("tab", name="How it works").click()
    page.wait_for_function("() => document.body.innerText.includes('Step 5')", timeout=STEP_TIMEOUT)
    text = page.locator("#tab-how").inner_text()
    assert re.search(r"user slot is position \d+", text)
    assert page.locator("#tab-how .tok-user").count() == 1
    shot(page, "06_how_it_works")
    assert not page.errors, page.errors


def test_cf_backend_selector(page, real_state):
    """Switching the CF model re-scores with its tokens; the map and the walkthrough follow."""
    choices = real_state.hub.backend_choices()
    if len(choices) < 2:
        pytest.skip("only one CF backend is trained in these checkpoints")
    first = real_state.pipeline()
    label, name = choices[1]
    other = real_state.pipeline(name)
    from collm_demo.ui.views import cf_label as cf_name

    wait_summary(page, f"CF model: {cf_name(first)}")
    box = page.locator("#cf-model input")
    box.click()
    page.locator(f'[role=option][aria-label="{label}"]').first.click()
    wait_summary(page, f"CF model: {cf_name(other)}")
    wait_summary(page, f"Top picks — CoLLM ({cf_name(other)} tokens)")
    wait_idle(page)
    page.get_by_role("tab", name="Embedding space").click()
    expected = (f"Mapped {cf_name(other)} tokens" if real_state.assets.layout(name) is not None
                else f"No embedding-map layout for the {cf_name(other)} tokens")
    page.wait_for_function(f"() => document.querySelector('#tab-embedding').innerText.includes({expected!r})",
                           timeout=STEP_TIMEOUT)
    page.get_by_role("tab", name="How it works").click()
    page.wait_for_function(f"() => document.querySelector('#tab-how').innerText.includes('({cf_name(other)})')",
                           timeout=STEP_TIMEOUT)
    shot(page, "09_other_cf_backend")
    assert not page.errors, page.errors


def test_composed_user(page):
    page.get_by_label("Compose your own").check()
    page.wait_for_function("() => document.body.innerText.includes('Composed user.')", timeout=STEP_TIMEOUT)
    assert not page.locator("#user-dropdown").is_visible()
    page.locator("#score-btn").click()
    wait_summary(page, "your composed user")
    assert "folded in" in summary(page)
    assert page.locator("#results-table .virtual-row").count() >= 1
    page.get_by_role("tab", name="Embedding space").click()
    page.wait_for_function("() => document.querySelector('#embedding-map')?.innerText.includes('your composed user')",
                           timeout=STEP_TIMEOUT)
    assert "placed (approximate)" in page.locator("#tab-embedding").inner_text()
    shot(page, "08_composed_user_map")
    assert not page.errors, page.errors


def test_narrow_window(browser, app_url):
    context = browser.new_context(viewport={"width": 420, "height": 900}, device_scale_factor=1)
    page = context.new_page()
    page.goto(app_url, wait_until="domcontentloaded")
    page.wait_for_function("() => (document.querySelector('#summary')?.innerText || '').includes('Top picks')",
                           timeout=LOAD_TIMEOUT)
    page.wait_for_selector("#delta-chart .js-plotly-plot", timeout=STEP_TIMEOUT)
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 440, f"page scrolls sideways at 420 px ({width} px wide)"
    wait_idle(page)
    shot(page, "07_narrow")
    context.close()


INSIDE_TIMEOUT = 300_000  # ms: five passes of the LLM (one with gradients), slow on 2 shared cores


def test_inside_the_llm_and_scenarios(page):
    """The Inside the LLM view on the current selection, then each guided scenario."""
    page.get_by_role("tab", name="Inside the LLM").click()
    page.wait_for_function("() => document.querySelector('#inside-candidate input')?.value", timeout=STEP_TIMEOUT)
    page.locator("#inside-run").click()
    page.wait_for_function("() => document.querySelector('#inside-summary').innerText.includes('Attribution:')",
                           timeout=INSIDE_TIMEOUT)
    page.wait_for_selector("#inside-attention .js-plotly-plot", timeout=STEP_TIMEOUT)
    assert page.locator("#inside-attribution span").count() > 50  # every prompt token, shaded
    assert table_rows(page, "inside-ablation") == 5
    wait_idle(page)
    shot(page, "10_inside_the_llm")
    from collm_demo.ui.inside import SCENARIOS

    for key, expected in (("warm", "(warm item"), ("cold", "(cold item"), ("composed", "your composed user")):
        page.locator(f"#inside-scenario-{key}").click()
        label = SCENARIOS[key][0]
        page.wait_for_function(f"() => document.querySelector('#inside-scenario-text').innerText.includes({label!r})",
                               timeout=STEP_TIMEOUT)
        page.wait_for_function(f"() => document.querySelector('#inside-summary').innerText.includes({expected!r})",
                               timeout=INSIDE_TIMEOUT)
        wait_idle(page)
        shot(page, f"11_inside_scenario_{key}")
    page.locator("#inside-scenario-simulator").click()
    page.wait_for_function("() => document.body.innerText.includes('text-only score stays')", timeout=STEP_TIMEOUT)
    assert page.locator("#tab-warmcold").is_visible() and page.locator("#inside-measured").is_visible()
    wait_idle(page)
    shot(page, "12_inside_scenario_simulator")
    assert not page.errors, page.errors
