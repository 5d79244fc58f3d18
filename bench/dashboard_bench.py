"""Dashboard speed over 50 synthetic runs, measured in a real browser.

    python -m bench.dashboard_bench [--runs 50] [--rounds 5] [--cold-rounds 3] [--root DIR]

Writes `--runs` sample runs (cifar/sample_runs.py; 10,000 test images
each, so tables have their real sizes) under a temporary artifacts root, or
reuses DIR. Then, with headless Chromium already open, it times:

- cold start: from launching `streamlit run streamlit_app.py` to the Models
  page drawn (results table and frontier charts on screen, script idle);
- page switch: a click on a page in the sidebar to that page drawn, for
  every page, `--rounds` times; the first visit of a page fills its caches
  and is reported apart from the later ones;
- selection change: adding a run to the sidebar's selection (timed from
  the moment the picker sends it, when its menu closes) and removing it
  again (from the click on its chip), on the Learning curves page, until
  the page is drawn again.

"Drawn" is cifar.browser.PAGE_IDLE: no script running, no stale
element, every chart's SVG and every image in place.

Two more figures make those readable on a shared machine: the same cold
start and page switch for a two-page "hello" Streamlit app, measured in the
same process (the floor this machine puts under any Streamlit app), and
each page's script time on the server alone (AppTest, warm caches).

Cold starts are measured side by side: `--cold-rounds` of each app, the
apps taking turns in an order rotated every round (so none always finds the
disk cache warmed by another), each in a fresh browser context (an empty
HTTP cache, as a new visitor has); the medians and their ratios are
reported. A third app, hello with one 20-row st.dataframe, is the floor
under any page that opens on a table. The aims (issue 15): cold start
within 1.3x of the hello app, selection change under 0.4 s.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path

from cifar import artifacts
from cifar.browser import CHROMIUM, CHROMIUM_ARGS, PAGE_IDLE, free_port, open_when_up, streamlit_server
from cifar.sample_runs import make_many_runs

PAGES = ["Learning curves", "Confusion", "Predict", "Run details", "Models"]


def drawn(page, heading: str) -> None:
    page.get_by_role("heading", name=heading, exact=True).wait_for(timeout=120_000)
    page.wait_for_function(PAGE_IDLE, timeout=120_000)


def timed(action, until) -> float:
    start = time.perf_counter()
    action()
    until()
    return time.perf_counter() - start


def cold_start(page, port: int, log: Path, stack: contextlib.ExitStack, script: Path | None = None,
               heading: str = "Models", table: bool = True) -> float:
    """Seconds from launching the server to its first page drawn: its
    heading, then its table's grid when it has one (the dashboard's Models
    page, a hello app's page A). The table is waited for by name: a page
    can look idle before its script has sent the table."""
    start = time.perf_counter()
    stack.enter_context(streamlit_server(port, log, **({"script": script} if script else {})))
    open_when_up(page, f"http://127.0.0.1:{port}/")
    drawn(page, heading)
    if table:
        page.locator('[data-testid="stDataFrame"] canvas').first.wait_for()
        page.wait_for_function(PAGE_IDLE, timeout=120_000)
    return time.perf_counter() - start


def cold_starts(browser, rounds: int, apps: dict[str, tuple[Path | None, str, bool]],
                folder: Path) -> dict[str, list[float]]:
    """Cold starts of each app ({name: (script or None for the dashboard,
    heading of its first page, whether that page shows a table)}), `rounds`
    of each, the apps taking turns in
    an order rotated every round (so none always finds the disk cache warmed
    by another), each in a fresh browser context: {name: seconds}."""
    names = list(apps)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            script, heading, table = apps[name]
            context = browser.new_context(viewport={"width": 1440, "height": 1000})
            with contextlib.ExitStack() as stack:
                seconds[name].append(cold_start(context.new_page(), free_port(), folder / f"cold-{round_}-{name}.log",
                                                stack, script, heading, table))
            context.close()
    return seconds


def switch_pages(page, rounds: int) -> dict[str, list[float]]:
    nav = page.locator('[data-testid="stSidebarNav"]')
    timings: dict[str, list[float]] = {name: [] for name in PAGES}
    for _ in range(rounds):
        for name in PAGES:
            timings[name].append(timed(lambda: nav.get_by_role("link", name=name, exact=True).click(),
                                       lambda: drawn(page, name)))
    return timings


def change_selection(page, rounds: int, addable: list[str]) -> list[float]:
    """Alternately add a run to the sidebar's selection (its id suffix typed
    into the picker) and remove it again (its chip's remove button), on the
    Learning curves page."""
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Learning curves", exact=True).click()
    drawn(page, "Learning curves")
    sidebar = page.locator('[data-testid="stSidebar"]')
    picker = sidebar.locator('[data-testid="stMultiSelect"] input')

    def shows(count: int):
        def check():
            sidebar.get_by_text(f"· {count} selected").wait_for(timeout=60_000)
            page.wait_for_function(PAGE_IDLE, timeout=60_000)
        return check

    selected = int(sidebar.get_by_text(" selected").inner_text().split("·")[1].split()[0])
    timings = []
    for run_id in addable[:rounds]:
        suffix = artifacts.parse_run_id(run_id).suffix
        picker.click()
        page.keyboard.type(suffix)
        option = page.get_by_role("option", name=f"· {suffix} ·")  # once the menu has filtered
        label = option.inner_text()
        option.click()
        # The picker sends its value when its menu closes: the clock starts there.
        timings.append(timed(lambda: page.keyboard.press("Escape"), shows(selected + 1)))
        timings.append(timed(lambda: sidebar.get_by_label(f"Remove {label}").click(), shows(selected)))
    return timings


def hello_app(with_table: bool = False) -> Path:
    """A two-page app that only prints a title: the floor under any Streamlit
    app. `with_table`: its first page also shows a 20-row pandas table in
    st.dataframe, the floor under any page that opens on a table (the
    browser loads and starts Streamlit's data grid, the script imports pandas)."""
    app = Path(tempfile.mkdtemp(prefix="hello-app-"))
    (app / "views").mkdir()
    table = ("import pandas as pd\nst.dataframe(pd.DataFrame({'run': [f'r{i}' for i in range(20)], "
             "'accuracy': [i / 20 for i in range(20)]}))\n")
    for name in ("a", "b"):
        (app / "views" / f"{name}.py").write_text(f"import streamlit as st\nst.title('Page {name}')\n"
                                                  + (table if with_table and name == "a" else ""))
    (app / "hello.py").write_text("import streamlit as st\nst.navigation([st.Page('views/a.py', title='A'), "
                                  "st.Page('views/b.py', title='B')]).run()\n")
    return app / "hello.py"


def hello_switches(browser, rounds: int, script: Path, log: Path) -> list[float]:
    """Page switches of the hello app."""
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    with contextlib.ExitStack() as stack:
        cold_start(page, free_port(), log, stack, script, "Page a", table=False)
        nav = page.locator('[data-testid="stSidebarNav"]')
        switches = [timed(lambda n=n: nav.get_by_role("link", name=n, exact=True).click(),
                          lambda n=n: drawn(page, f"Page {n.lower()}"))
                    for _ in range(rounds) for n in ("B", "A")]
    page.close()
    return switches


def script_seconds(rounds: int) -> dict[str, float]:
    """Median script time of each page on the server alone (AppTest, warm caches)."""
    from streamlit.testing.v1 import AppTest

    from cifar.browser import REPO
    from cifar.streamlit_compat import every_request_a_later_one

    files = {"Models": "pages/models.py", "Learning curves": "pages/curves.py",
             "Confusion": "pages/confusion.py", "Predict": "pages/predict.py",
             "Run details": "pages/run_details.py"}
    timings: dict[str, list[float]] = {name: [] for name in files}
    with every_request_a_later_one():
        app = AppTest.from_file(REPO / "streamlit_app.py", default_timeout=120).run()
        for round_ in range(rounds + 1):
            for name, path in files.items():
                app.switch_page(path)
                seconds = timed(app.run, lambda: None)
                if round_:  # the first round fills the caches
                    timings[name].append(seconds)
    return {name: statistics.median(values) for name, values in timings.items()}


def report_cold_starts(colds: dict[str, list[float]]) -> None:
    ours = statistics.median(colds["dashboard"])
    print(f"cold start to Models drawn: {summary(colds['dashboard'])}")
    for name in ("hello", "hello with a table"):
        print(f"  {name} app: {summary(colds[name])}; ours / its median: {ours / statistics.median(colds[name]):.2f}"
              + (" (aim: 1.3 at most)" if name == "hello" else ""), flush=True)


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} s, max {max(values):.2f} s (n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cold-rounds", type=int, default=3, help="cold starts of each app, alternating")
    parser.add_argument("--cold-only", action="store_true", help="only the cold starts")
    parser.add_argument("--root", help="artifacts root to reuse (created with --runs runs if empty)")
    args = parser.parse_args()

    root = Path(args.root or tempfile.mkdtemp(prefix="dashboard-bench-"))
    os.environ["CIFAR_ARTIFACTS"] = str(root)
    if not artifacts.runs_dir().is_dir():
        started = time.perf_counter()
        make_many_runs(args.runs)
        print(f"wrote {args.runs} runs under {root} in {time.perf_counter() - started:.0f} s")
    print(f"{len(artifacts.list_runs())} runs under {root}; {os.cpu_count()} CPU cores")

    scripts = {} if args.cold_only else script_seconds(args.rounds)  # before Playwright: its event loop slows AppTest down

    from playwright.sync_api import sync_playwright
    hello = hello_app()
    with sync_playwright() as playwright, contextlib.ExitStack() as stack:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        colds = cold_starts(browser, args.cold_rounds, {"dashboard": (None, "Models", True), "hello": (hello, "Page a", False),
                                                        "hello with a table": (hello_app(True), "Page a", True)},
                            root)
        report_cold_starts(colds)
        if args.cold_only:
            return
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        cold_start(page, free_port(), root / "streamlit.log", stack)
        switches = switch_pages(page, args.rounds)
        oldest = [run.run_id for run in artifacts.list_runs()]  # the default selection is the newest
        selections = change_selection(page, args.rounds, oldest)
        stack.close()
        floor_switches = hello_switches(browser, args.rounds, hello, root / "hello.log")
        browser.close()

    for name, values in switches.items():
        print(f"switch to {name:<16} first visit {values[0]:.2f} s; later visits {summary(values[1:])}; "
              f"script alone {scripts[name]:.2f} s")
    later = [v for values in switches.values() for v in values[1:]]
    print(f"page switches after first visits: {summary(later)}  (hello app: {summary(floor_switches)})")
    print(f"selection change on Learning curves: {summary(selections)} (aim: median under 0.4 s)")


if __name__ == "__main__":
    main()
