"""Runs and a served dashboard for the tests: the names the tests import.

The runs are `cifar.sample_runs`: simulated predictions and learning curves,
written by the same functions that write real runs (evaluation tables,
metadata, publishing) for models of the real registry. The server and
browser helpers are `cifar.browser`, which the benchmarks share.

    CIFAR_ARTIFACTS=/tmp/look python -m tests.fixture_runs [COUNT]: runs to look at by hand.
"""

from __future__ import annotations

import sys

from cifar import artifacts
from cifar.browser import (CHROMIUM, CHROMIUM_ARGS, PAGE_IDLE, REPO, free_port, open_when_up,  # noqa: F401
                           past_first_request, streamlit_server)
from cifar.sample_runs import (CAT, DOG, START, SampleRun, clear_runs, make_broken_run,  # noqa: F401
                               make_many_runs, make_run, make_study_runs, network_facts, probabilities_for,
                               simulate_predictions, synthetic_image, tiny_model_file)

FixtureRun = SampleRun  # the name the tests have always used

if __name__ == "__main__":
    made = make_many_runs(int(sys.argv[1]), n_test=1000) if len(sys.argv) > 1 else make_study_runs()
    make_broken_run()
    print(f"{len(made)} runs and one broken folder under {artifacts.root()}")
