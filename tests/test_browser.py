"""The dashboard in a real browser: `streamlit run streamlit_app.py` on a free
local port, every page opened in headless Chromium over fixture runs, one
visible element checked on each, and a screenshot of each taken.

Skipped only when /usr/bin/chromium is missing. Set CIFAR_SCREENSHOT_RUNS
to an artifacts root (e.g. the repository's artifacts/) to run it over those
runs instead of the synthetic ones and save the screenshots to
docs/screenshots/<page>.png for the README; otherwise they go to the test's
temporary folder.
"""

import io
import os
from pathlib import Path

import pytest
from PIL import Image

import fixture_runs
from fixture_runs import CHROMIUM, CHROMIUM_ARGS, PAGE_IDLE, REPO, free_port, open_when_up, streamlit_server

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"{CHROMIUM} is missing (apt-get install chromium); "
                                       "the real-browser test needs Debian's chromium")
SCREENSHOTS = REPO / "docs" / "screenshots"
WIDTH, HEIGHT = 1440, 1000


def settle(page, heading: str) -> None:
    page.get_by_role("heading", name=heading, exact=True).wait_for(timeout=60_000)
    page.wait_for_function(PAGE_IDLE, timeout=60_000)


def go_to(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=title, exact=True).click()
    settle(page, title)


# JavaScript: true once every chart's drawing is as wide as its box again.
CHARTS_FIT = """() => [...document.querySelectorAll('[data-testid="stPlotlyChart"]')].every(chart => {
    const svg = chart.querySelector('.main-svg');
    return svg && Math.abs(svg.getBoundingClientRect().width - chart.getBoundingClientRect().width) < 2;
})"""
NEXT_FRAMES = "() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))"


def open_tab(page, label: str) -> None:
    """Only the open tab is drawn: wait for its rerun to put something in it."""
    page.get_by_role("tab", name=label).click()
    page.get_by_role("tabpanel", name=label).locator('[data-testid="stElementContainer"]').first.wait_for(
        timeout=60_000)
    page.wait_for_function(PAGE_IDLE, timeout=60_000)


def shoot(page, folder: Path, name: str) -> None:
    """The whole page: Streamlit scrolls inside its main pane, so the window
    is stretched to the pane's height (at most 2,600 px) for the picture."""
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": WIDTH, "height": max(HEIGHT, min(height, 2600))})
    page.evaluate(NEXT_FRAMES)  # the resize has been laid out
    page.wait_for_function(CHARTS_FIT, timeout=60_000)  # charts redraw at the new size
    page.wait_for_function(PAGE_IDLE, timeout=60_000)
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=folder / f"{name}.png")
    page.set_viewport_size({"width": WIDTH, "height": HEIGHT})


def png(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 40), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_every_page_renders_in_a_real_browser(tmp_path, monkeypatch):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)  # the first run of each page imports and caches on a busy machine

    # The README's pictures are only replaced when asked for; a plain test run
    # leaves the tracked files alone.
    shots = tmp_path / "screenshots"
    if os.environ.get("CIFAR_SCREENSHOT_RUNS"):
        monkeypatch.setenv("CIFAR_ARTIFACTS", os.environ["CIFAR_SCREENSHOT_RUNS"])
        shots, broken = SCREENSHOTS, None
    else:
        fixture_runs.make_study_runs(n_test=1000)
        broken = fixture_runs.make_broken_run()
    port = free_port()
    with streamlit_server(port, tmp_path / "streamlit.log"), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        sidebar = page.locator('[data-testid="stSidebar"]')

        # The server's first request is a deep link to a page that is not the
        # default: the case Streamlit's legacy pages/ mode gets wrong.
        open_when_up(page, f"http://127.0.0.1:{port}/curves")
        settle(page, "Learning curves")
        expect(sidebar.get_by_text("Runs to compare")).to_be_visible()
        expect(page.locator('[data-testid="stPlotlyChart"]').first).to_be_visible()
        if broken:
            expect(page.get_by_text("1 run folder could not be read and is hidden")).to_be_visible()
        shoot(page, shots, "learning_curves")

        go_to(page, "Models")
        expect(page.locator('[data-testid="stDataFrame"]').first).to_be_visible()
        if broken:
            expect(page.get_by_text(broken)).to_be_visible()
        shoot(page, shots, "models")
        open_tab(page, "Accuracy against cost")
        expect(page.locator('[data-testid="stPlotlyChart"]').nth(1)).to_be_visible()
        shoot(page, shots, "models_frontier")

        go_to(page, "Confusion")
        expect(page.locator('[data-testid="stPlotlyChart"]').nth(2)).to_be_visible()  # two runs and the change
        shoot(page, shots, "confusion")
        open_tab(page, "Cat versus dog")
        # Dataframes also render their headers into a hidden table, so the
        # text is looked for in the tab's chart, not anywhere on the page.
        cat_dog = page.get_by_role("tabpanel", name="Cat versus dog").locator('[data-testid="stPlotlyChart"]')
        expect(cat_dog.first).to_be_visible()
        expect(cat_dog.first).to_contain_text("Cats predicted as dog")
        open_tab(page, "Most-confused pairs")
        expect(page.locator('[data-testid="stImage"] img').first).to_be_visible()
        shoot(page, shots, "confusion_mistakes")

        go_to(page, "Compare")
        expect(page.get_by_text("points of accuracy (95% CI").first).to_be_visible()
        shoot(page, shots, "compare")
        open_tab(page, "Calibration")
        expect(page.get_by_role("tabpanel", name="Calibration").locator('[data-testid="stPlotlyChart"]')
               .first).to_contain_text("Reliability")
        shoot(page, shots, "compare_calibration")
        open_tab(page, "Where they differ")
        expect(page.locator('[data-testid="stImage"] img').first).to_be_visible()
        shoot(page, shots, "compare_explorer")

        go_to(page, "Predict")
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files([
            {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image"},
            {"name": "red.png", "mimeType": "image/png", "buffer": png("red")}])
        expect(page.get_by_text("'notes.txt' is not a supported image")).to_be_visible()
        expect(page.get_by_role("heading", name="red.png")).to_be_visible()
        page.get_by_role("button", name="Draw a random test image").click()
        expect(page.get_by_role("heading", name="Random test image")).to_be_visible()
        expect(page.get_by_text("Drawn from the whole test set of")).to_be_visible()
        expect(page.locator('[data-testid="stDataFrame"]')).to_have_count(2)  # both images' predictions
        page.wait_for_function(PAGE_IDLE, timeout=60_000)
        shoot(page, shots, "predict")

        go_to(page, "Run details")
        expect(page.get_by_text("Test accuracy").filter(visible=True).first).to_be_visible()
        expect(page.get_by_role("tab", name="Files and downloads")).to_be_visible()
        expect(page.locator('[data-testid="stDataFrame"]').first).to_be_visible()  # the settings table
        shoot(page, shots, "run_details")

        go_to(page, "Robustness")
        expect(page.get_by_role("heading", name="What the corruptions look like")).to_be_visible()
        shoot(page, shots, "robustness")
        browser.close()
