"""Server time of the Compare page for 2 and 10 selected runs.

    python -m bench.compare_page [--runs 2 10] [--rounds 5] [--images 10000]

Writes sample runs (cifar/sample_runs.py, `--images` test images each)
under a temporary artifacts root, opens the Compare page with Streamlit's
AppTest (the script alone, no browser) and times each tab: the first visit
(table caches cold, imports done) and the median of `--rounds` later reruns
(what a click on the page costs the server), in wall-clock seconds and in
CPU seconds of this process (on a shared, loaded machine the wall clock
mostly measures the queue for a core). The Models page, timed the same way
over the same runs, is the reference for what any page costs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "streamlit_app.py"
TABS = ["Is the difference real?", "Calibration", "Where they differ", "Label doubts"]


def rerun(app) -> tuple[float, float]:
    """Wall and CPU seconds of one script run."""
    wall, cpu = time.perf_counter(), time.process_time()
    app.run()
    if app.exception:
        raise RuntimeError(app.exception)
    return time.perf_counter() - wall, time.process_time() - cpu


def median(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def measure(count: int, rounds: int, images: int) -> dict[str, tuple]:
    """{tab: (first (wall, cpu), later median (wall, cpu))}, and the Models page's."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from cifar.browser import past_first_request
    from cifar.sample_runs import clear_runs, make_many_runs

    clear_runs()
    run_ids = [run.run_id for run in make_many_runs(count, n_test=images)]
    st.cache_data.clear()
    timings = {}
    with past_first_request():
        app = AppTest.from_file(str(APP), default_timeout=600)
        app.query_params["run"] = run_ids
        app.run()
        app.switch_page("pages/compare.py").run()
        for tab in TABS:
            app.session_state["compare_view"] = tab
            first = rerun(app)
            timings[tab] = (first, median([rerun(app) for _ in range(rounds)]))
        app.switch_page("pages/models.py")
        first = rerun(app)
        timings["(Models page)"] = (first, median([rerun(app) for _ in range(rounds)]))
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, nargs="+", default=[2, 10])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=10_000)
    args = parser.parse_args()
    os.environ["CIFAR_ARTIFACTS"] = tempfile.mkdtemp(prefix="cifar-compare-bench-")
    for count in args.runs:
        for tab, (first, later) in measure(count, args.rounds, args.images).items():
            print(f"{count:3d} runs  {tab:26} first {first[0]:5.2f} s (CPU {first[1]:4.2f} s)   "
                  f"later, median of {args.rounds}: {later[0]:5.2f} s (CPU {later[1]:4.2f} s)")


if __name__ == "__main__":
    main()
