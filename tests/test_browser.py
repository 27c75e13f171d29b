"""The page in headless Chromium: pick a user and candidates, score, toggle injection, visit tabs.

Screenshots go to tests/screenshots/ (git-ignored). Needs /usr/bin/chromium
(``apt-get install chromium``, Debian's package) and the playwright Python package. Without them
these tests are skipped with that reason in the run's summary (``-rs``); with
``COLLM_REQUIRE_BROWSER=1`` (set by .ci/run) a missing browser is a failure instead.
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


def _missing(reason: str) -> None:
    if os.environ.get("COLLM_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser tests required (COLLM_REQUIRE_BROWSER=1) but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright import sync_api
    except ImportError:
        _missing("the playwright package is not installed (pip install -r requirements.txt)")
    if not os.path.exists(CHROMIUM):
        _missing(f"{CHROMIUM} not installed: `apt-get install chromium` (Debian), see the README's Tests section")
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


def open_app(browser, app_url, **context_args):
    """A new browser context on the app, once the first example is scored; JS errors collect in page.errors."""
    context = browser.new_context(**context_args)
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda err: page.errors.append(str(err)))
    page.goto(app_url, wait_until="load")
    page.wait_for_function("() => (document.querySelector('#summary')?.innerText || '').includes('Top picks')",
                           timeout=LOAD_TIMEOUT)
    wait_idle(page)
    return context, page


@pytest.fixture()
def page(browser, app_url):
    context, page = open_app(browser, app_url, viewport={"width": 1360, "height": 1000})
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
    page.locator("#nearest-fold").click()  # folded: the weak nearest words invite over-reading
    page.wait_for_function("() => document.querySelectorAll('#nearest-words .virtual-row').length == 8",
                           timeout=STEP_TIMEOUT)
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
    context, page = open_app(browser, app_url, viewport={"width": 420, "height": 900}, device_scale_factor=1)
    page.wait_for_selector("#delta-chart .js-plotly-plot", timeout=STEP_TIMEOUT)
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 440, f"page scrolls sideways at 420 px ({width} px wide)"
    wait_idle(page)
    shot(page, "07_narrow")
    assert not page.errors, page.errors
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
    # the scenario switched the tab itself: its plots are drawn at their container's width too
    page.wait_for_function(PLOT_FILLS_JS, arg="sim-chart", timeout=5_000)
    wait_idle(page)
    shot(page, "12_inside_scenario_simulator")
    assert not page.errors, page.errors


# ------------------------------------------------------------------ the lesson, rehearsed
# A lecturer's 10-minute class (docs/teaching.md) at a projector's 1280×800, then the same page at
# 125 % zoom: a 1280×800 screen zoomed to 125 % lays the page out in 1024×640 CSS pixels.
PROJECTOR = {"viewport": {"width": 1280, "height": 800}}
ZOOM_125 = {"viewport": {"width": 1024, "height": 640}, "device_scale_factor": 1.25}

# Words split across two lines inside table cells (a word may still break after a hyphen or slash),
# cells whose text is cut off, and tables wider than their box (columns scrolled out of sight): what
# makes a projected table unreadable.
BROKEN_WORDS_JS = """(root) => {
  const bad = [];
  for (const cell of document.querySelectorAll(root + ' td, ' + root + ' th')) {
    if (!cell.offsetParent) continue;  // not shown (a closed accordion, another tab)
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (const m of node.textContent.matchAll(/[^\\s\\-\\u2013\\u2014\\/·]+/g)) {
        const range = document.createRange();
        range.setStart(node, m.index); range.setEnd(node, m.index + m[0].length);
        const tops = new Set([...range.getClientRects()].filter(r => r.width > 0).map(r => Math.round(r.top)));
        if (tops.size > 1) bad.push(m[0]);
      }
    }
    const inner = cell.querySelector('span, div') || cell;
    if (inner.scrollWidth > inner.clientWidth + 2 && getComputedStyle(inner).overflow !== 'visible')
      bad.push('clipped: ' + cell.innerText.slice(0, 40));
  }
  for (const table of document.querySelectorAll(root + ' table')) {  // wider than its box: columns out of sight
    if (!table.offsetParent) continue;
    let box = table.parentElement;
    while (box && !['auto', 'scroll', 'hidden'].includes(getComputedStyle(box).overflowX)) box = box.parentElement;
    if (box && box.scrollWidth > box.clientWidth + 2)
      bad.push('table scrolls sideways: ' + (table.querySelector('th')?.innerText || '').slice(0, 30));
  }
  return bad;
}"""


# A plotly figure drawn at (nearly) its container's full width.
PLOT_FILLS_JS = """(id) => { const box = document.querySelector('#' + id);
    const svg = box?.querySelector('.main-svg');
    return !!svg && svg.getBoundingClientRect().width >= 0.98 * box.getBoundingClientRect().width; }"""


def candidate_ids(page) -> list[str]:
    return [t.strip() for t in page.locator("#candidates .token").all_inner_texts()]


def in_view(page, selector: str) -> bool:
    """Whether the element's top edge is on screen (not above, not below the fold)."""
    return page.evaluate(f"""() => {{ const r = document.querySelector({selector!r}).getBoundingClientRect();
                                       return r.top >= -2 && r.top < window.innerHeight - 40; }}""")


def test_lesson_rehearsal(browser, app_url, real_state):
    from collm_demo.ui.warm_cold import results_reading

    context, page = open_app(browser, app_url, **PROJECTOR)
    user = real_state.catalog.default_user()
    assert real_state.catalog.users[user].warm and f"user {user}" in summary(page)
    # the whole history is on screen: ten rows, no scrollbar of the table's own
    assert table_rows(page, "history-table") == len(real_state.catalog.real_history(user)) == 10
    assert page.evaluate("""() => { const t = document.querySelector('#history-table table');
        let box = t.parentElement;
        while (box && !['auto', 'scroll'].includes(getComputedStyle(box).overflowY)) box = box.parentElement;
        return !box || box.scrollHeight <= box.clientHeight + 2; }""")
    shot(page, "20_lesson_open")

    # The evidence first: the headline reading is on the Warm vs cold tab, written from results.json.
    page.get_by_role("tab", name="Warm vs cold").click()
    reading = page.locator("#results-reading").inner_text()
    first_sentence = results_reading(real_state.assets.results()).split("\n")[0]
    assert re.search(r"AUC \d\.\d{4}", first_sentence) and first_sentence.split(":")[1][:20].strip() in reading
    assert table_rows(page, "results-eval") == 6  # text-only, MF, MF without fold-in, like share, CoLLM, CoLLM by the paper's recipe
    shot(page, "21_lesson_evidence")

    # A warm user's test items, scored twice: the same candidates, the same scores, results in view.
    page.get_by_role("tab", name="Recommend").click()
    seen = []
    for _ in range(2):
        page.locator("#set-popular").click()  # something else in between, so the second draw is a real redraw
        page.wait_for_function("() => document.querySelectorAll('#candidates .token').length == 20",
                               timeout=STEP_TIMEOUT)
        page.locator("#set-test").click()
        page.wait_for_timeout(500)
        wait_idle(page)
        cands = candidate_ids(page)
        page.evaluate("() => window.scrollTo(0, 0)")  # where a presenter is after picking the inputs
        page.locator("#score-btn").click()
        wait_idle(page)  # the scoring and the chain that updates the other tabs
        page.wait_for_timeout(1000)  # a smooth scroll takes a moment
        assert f"user {user}" in summary(page)
        assert in_view(page, "#summary"), "the results did not come into view after Score"
        seen.append((cands, page.locator("#results-table").inner_text()))  # the same scores too
    assert seen[0] == seen[1] and len(seen[0][0]) >= 10
    shot(page, "22_lesson_scored")

    # Switch the CF model: the header follows, and the plots fill their containers when their tabs are
    # shown again (visited once before the switch: a tab first opened afterwards is drawn fresh anyway).
    for tab, plot in (("Embedding space", "embedding-map"), ("Warm vs cold", "sim-chart")):
        page.get_by_role("tab", name=tab).click()
        page.wait_for_selector(f"#{plot} .main-svg", timeout=STEP_TIMEOUT)
    page.get_by_role("tab", name="Recommend").click()
    choices = real_state.hub.backend_choices()
    if len(choices) >= 2:
        from collm_demo.ui.views import cf_label

        label, name = choices[1]
        page.locator("#cf-model input").click()
        page.locator(f'[role=option][aria-label="{label}"]').first.click()
        wait_summary(page, f"CF model: {cf_label(real_state.pipeline(name))}")
        wait_idle(page)
        assert cf_label(real_state.pipeline(name)) in page.locator("#status-plain").inner_text()
    for tab, plot, name in (("Embedding space", "embedding-map", "23_lesson_map_after_switch"),
                            ("Warm vs cold", "sim-chart", "24_lesson_simulator_after_switch")):
        page.get_by_role("tab", name=tab).click()
        # fails at 700 px of 1216: plotly laid out in the hidden tab
        page.wait_for_function(PLOT_FILLS_JS, arg=plot, timeout=5_000)
        shot(page, name)
    assert not page.errors, page.errors
    context.close()


def test_lesson_at_125_percent_zoom(browser, app_url):
    context, page = open_app(browser, app_url, **ZOOM_125)
    for tab, elem in (("Recommend", "tab-recommend"), ("Embedding space", "tab-embedding"),
                      ("Warm vs cold", "tab-warmcold"), ("How it works", "tab-how")):
        page.get_by_role("tab", name=tab).click()
        page.wait_for_timeout(800)
        wait_idle(page)
        if elem == "tab-warmcold":  # the page-load chain fills the simulator last (its table is the widest)
            page.wait_for_function("() => document.body.innerText.includes('text-only score stays')",
                                   timeout=STEP_TIMEOUT)
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 1024 + 4, f"{tab}: the page scrolls sideways at 125 % zoom ({width} px)"
        broken = page.evaluate(BROKEN_WORDS_JS, f"#{elem}")
        assert not broken, f"{tab}: words broken or clipped in tables at 125 % zoom: {broken[:8]}"
        shot(page, f"25_zoom125_{elem}")
    assert not page.errors, page.errors
    context.close()
