"""The dashboard served locally and driven by headless Chromium: what the
browser test, the screenshots, the dashboard benchmark and the
time-to-accuracy chart share.

Playwright is a test-only package (requirements-test.txt), imported only by
the functions that drive the browser. Servers start on 127.0.0.1 on a free
port and are stopped through their own process, never by name.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# JavaScript: true once Streamlit has finished its script run and drawn it. The
# script state comes first: the status widget shows only after a delay, so a
# page whose script is still running (a table not yet sent) can look idle.
PAGE_IDLE = """() => document.querySelector('[data-testid="stApp"]')?.dataset.testScriptState === 'notRunning'
    && !document.querySelector('[data-testid="stStatusWidget"]')
    && !document.querySelector('[data-stale="true"]')
    && !document.querySelector('[data-testid="stSkeleton"], [data-testid="stSpinner"]')
    && [...document.querySelectorAll('[data-testid="stPlotlyChart"]')].every(c => c.querySelector('.main-svg'))
    && [...document.images].every(image => image.complete)"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(port: int, log_path: Path, script: Path = REPO / "streamlit_app.py"):
    """`streamlit run streamlit_app.py` on a local port, over $CIFAR_ARTIFACTS;
    yields the process (already started, maybe not yet listening)."""
    command = [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port),
               "--server.address", "127.0.0.1", "--server.headless", "true",
               "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def open_when_up(page, url: str, timeout: float = 120) -> None:
    """Playwright `page.goto(url)`, retried until the server listens."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            page.goto(url)
            return
        except Exception:  # connection refused until the server listens
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def past_first_request():
    """Every AppTest run in the state a server is in after its first request
    (see cifar.streamlit_compat), so a click is not swallowed by start_page's rerun."""
    from cifar.streamlit_compat import every_request_a_later_one

    return every_request_a_later_one()


def save_figure_png(fig, path: Path, width: int = 1120, height: int = 1400) -> None:
    """A Plotly figure as a PNG, drawn by headless Chromium (no kaleido needed)."""
    from playwright.sync_api import sync_playwright
    with tempfile.TemporaryDirectory() as tmp:
        html = Path(tmp) / "chart.html"
        fig.write_html(html, include_plotlyjs=True, full_html=True)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(html.as_uri())
            page.wait_for_selector(".main-svg")
            page.locator(".plotly-graph-div").screenshot(path=path)
            browser.close()
