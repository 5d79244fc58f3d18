"""What every page shares: cached reads of the artifacts, the run selection
kept in the URL, and the messages for empty, broken and failing states.

Reads are cached keyed on what changed on disk: the run list (checked
against the schema, with every run's metrics) on `artifacts.runs_signature()`,
shared read-only with `st.cache_resource` as every rerun asks for it many
times; a run's tables with `st.cache_data` on its own folder's modification
time (a published run never changes, so a new run does not evict the
others). Models are cached with `st.cache_resource`.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import pandas as pd
import streamlit as st

from cifar import IMAGE_SHAPE, artifacts, dashboard, predict, run_marks, streamlit_compat
from cifar.errors import CifarError, RunError

SELECTION_KEY = "selected_runs"
URL_PARAM = "run"
_FRAME_DRAWN = "_app_frame_drawn"
_log = logging.getLogger(__name__)


# ---------------------------------------------------------------- cached reads

def _on_disk() -> tuple[str, int]:
    """Cache key for what is on disk: the artifacts root and a digest of its
    runs' signature (hashing 50 (name, mtime) pairs on every call is not free)."""
    return str(artifacts.root()), hash(artifacts.runs_signature())


@st.cache_resource(show_spinner=False, max_entries=4)
def _scan(root: str, signature: int) -> tuple[list[tuple[str, dict]], list[tuple[str, str]], dict[str, dict]]:
    """Readable runs, skipped folders with their reasons, and each run's
    metrics row. Listing checks each run against its schema; its metrics are
    read (and so checksummed) here too, so a run whose metrics changed since
    publication is skipped with the others, on every page, not only where
    its table is shown. Shared, not copied (a page asks for it a dozen times
    per rerun): callers only read it."""
    runs, skipped = artifacts.scan_runs()
    listed, reasons, metrics = [], [(s.name, s.reason) for s in skipped], {}
    for run in runs:
        try:
            metrics[run.run_id] = artifacts.read_metrics(run)
            listed.append((run.run_id, run.metadata))
        except CifarError as exc:
            reasons.append((run.run_id, str(exc)))
        except OSError as exc:  # deleted or replaced between listing and reading
            reasons.append((run.run_id, vanished(exc)))
    return listed, sorted(reasons), metrics


def runs() -> list[tuple[str, dict]]:
    """(run id, metadata) of every readable run, oldest first."""
    return list(_scan(*_on_disk())[0])


def skipped() -> list[tuple[str, str]]:
    return list(_scan(*_on_disk())[1])


def metadata(run_id: str) -> dict:
    return dict(runs()).get(run_id, {})


def marks() -> run_marks.Marks:
    """The team's reference and hidden marks (a small file, read on every rerun
    so a mark made in one session shows in every other)."""
    return run_marks.read_marks()


def visible_runs() -> list[tuple[str, dict]]:
    """The runs the team has not hidden, oldest first."""
    hidden = marks().hidden
    return [(run_id, meta) for run_id, meta in runs() if run_id not in hidden]


def labels() -> dict[str, str]:
    reference = marks().reference
    return {run_id: dashboard.run_label(run_id, meta, run_id in reference) for run_id, meta in runs()}


@st.cache_data(show_spinner=False, max_entries=400)
def _table(run_id: str, name: str, version: int) -> pd.DataFrame:
    return artifacts.read_table(run_id, name)


def _version(run_id: str) -> int:
    """The run folder's modification time: it changes only if the run is replaced."""
    return dict(artifacts.runs_signature()).get(run_id, 0)


def vanished(exc: OSError) -> str:
    return (f"its files changed on disk while this page read them ({exc.__class__.__name__}: it was deleted or "
            "is being replaced); reload the page")


def table(run_id: str, name: str) -> pd.DataFrame:
    """One table of one run (raises RunError with a readable message)."""
    try:
        return _table(run_id, name, _version(run_id))
    except OSError as exc:
        raise RunError(f"run {run_id}: {vanished(exc)}") from None


@st.cache_data(show_spinner=False, max_entries=400)
def _optional_table(run_id: str, name: str, version: int) -> pd.DataFrame | None:
    return artifacts.read_optional_table(run_id, name)


def optional_table(run_id: str, name: str) -> pd.DataFrame | None:
    """An optional table of one run, or None when the run has none (yet);
    RunError when the run or the table cannot be read."""
    try:
        return _optional_table(run_id, name, _version(run_id))
    except OSError as exc:
        raise RunError(f"run {run_id}: {vanished(exc)}") from None


def tables(run_ids: list[str], name: str) -> dict[str, pd.DataFrame]:
    """{run label: table} for the runs whose table can be read; a warning
    names each run whose table cannot, and the others still show."""
    found, names = {}, labels()
    for run_id in run_ids:
        try:
            found[names.get(run_id, run_id)] = table(run_id, name)
        except CifarError as exc:
            st.warning(f"**{names.get(run_id, run_id)}** is left out here: {exc}")
    return found


@st.cache_data(show_spinner=False, max_entries=4)
def _comparison(root: str, signature: int, reference: frozenset) -> pd.DataFrame:
    listed, _, metrics = _scan(root, signature)
    return dashboard.comparison_table(listed, metrics, reference)


def comparison() -> pd.DataFrame:
    """Every run (hidden ones too) as a row of the Models table."""
    return _comparison(*_on_disk(), marks().reference)


@st.cache_data(show_spinner=False)
def study_rows() -> pd.DataFrame:
    return dashboard.study_rows(dashboard.study_results())


@st.cache_resource(show_spinner=False, max_entries=8)
def _model(run_id: str, version: int):
    model = predict.load_model(run_id)
    # The first call traces the graph; doing it here keeps it out of the timings shown.
    predict.predict_with_timing(model, np.zeros(IMAGE_SHAPE, dtype=np.uint8))
    return model


def model(run_id: str):
    return _model(run_id, _version(run_id))


# ---------------------------------------------------------------- the frame

def app_frame() -> None:
    """What streamlit_app.py draws around every page: the run picker."""
    st.session_state[_FRAME_DRAWN] = True
    selection_sidebar()


def start_page(title: str, *, expand_warnings: bool = False) -> None:
    """First line of every page: its title and the notice of unreadable runs.

    It also makes sure streamlit_app.py ran in this run. The first request a
    fresh server gets runs in Streamlit's legacy mode for apps with a pages/
    folder, which executes a deep-linked page alone, without
    streamlit_app.py: no sidebar, no selection. Only a call to st.navigation
    switches that mode off, too late for that request; so switch it off here
    (cifar/streamlit_compat.py) and rerun."""
    if not st.session_state.pop(_FRAME_DRAWN, False):
        streamlit_compat.leave_legacy_pages_mode()
        st.rerun()
    st.title(title)
    skipped_notice(expand_warnings)


# ---------------------------------------------------------------- selection

def selected() -> list[str]:
    """Run ids chosen in the sidebar, in the order chosen."""
    return list(st.session_state.get(SELECTION_KEY, []))


def selection_sidebar() -> None:
    """The run picker every page shares, mirrored into the URL (?run=ID&run=ID)
    so that a copied link reopens the same comparison."""
    every = [run_id for run_id, _ in runs()]
    current = marks()
    if SELECTION_KEY not in st.session_state:
        # A copied link may name a hidden run: it still opens what was shared.
        from_url = [r for r in st.query_params.get_all(URL_PARAM) if r in every]
        st.session_state[SELECTION_KEY] = from_url or dashboard.default_selection(
            runs(), current.reference, current.hidden)
    else:  # a run deleted since the last rerun drops out quietly
        st.session_state[SELECTION_KEY] = [r for r in st.session_state[SELECTION_KEY] if r in every]
    ids = [run_id for run_id, _ in visible_runs()]
    ids += [run_id for run_id in selected() if run_id not in ids]
    names = labels()
    st.sidebar.multiselect("Runs to compare", ids, key=SELECTION_KEY, format_func=lambda r: names.get(r, r),
                           placeholder="Choose runs", help="Shared by every page and kept in the page address, "
                           "so a copied link opens the same comparison.")
    hidden = len(every) - len(visible_runs())
    st.sidebar.caption(f"{len(every)} runs on disk{f' ({hidden} hidden)' if hidden else ''} · "
                       f"{len(selected())} selected{' · ★ reference run' if current.reference else ''}")
    if selected():
        st.query_params[URL_PARAM] = selected()
    elif URL_PARAM in st.query_params:
        del st.query_params[URL_PARAM]


def run_in_url(key: str, options: list, default=None):
    """Seed the run picker `key` from ?key=RUN_ID on the page's first run, then
    mirror its choice back, so a copied link reopens the same run. (Streamlit's
    own bind="query-params" would write the run's label, which changes when the
    run is marked; the id never does.) Use with the widget's key=`key`."""
    if key not in st.session_state:
        raw = st.query_params.get(key)
        wanted = None if raw == "none" else raw  # "none": the link chose no run here
        st.session_state[key] = wanted if raw is not None and wanted in options else default
    elif st.session_state[key] not in options:
        st.session_state[key] = default


def keep_in_url(key: str, value, default=None) -> None:
    """Write a picker's run id to the address (none when it is the default)."""
    if value is None or value == default:
        st.query_params.pop(key, None)
    else:
        st.query_params[key] = value


def skipped_notice(expanded: bool) -> None:
    """Names every run folder that could not be read, and why."""
    broken = skipped()
    if broken:
        heading = (f"{len(broken)} run folder could not be read and is hidden" if len(broken) == 1 else
                   f"{len(broken)} run folders could not be read and are hidden")
        with st.expander(f"{heading}; every other run is shown", expanded=expanded, icon=":material/warning:"):
            st.warning("\n".join(f"- `{name}`: {reason}" for name, reason in broken))


# ---------------------------------------------------------------- states

def no_runs_message() -> None:
    st.info(f"No trained runs yet (looked in `{artifacts.runs_dir()}`). Train one with:", icon=":material/info:")
    st.code(dashboard.TRAIN_COMMAND, language="bash")
    st.caption("It takes a few minutes on a laptop; reload this page when it finishes.")


def require_selection() -> list[str]:
    """The selected runs, or stop the page with a message saying what to do."""
    if not runs():
        no_runs_message()
        st.stop()
    if not selected():
        st.info("Choose one or more runs in the sidebar under **Runs to compare**.", icon=":material/arrow_back:")
        st.stop()
    return selected()


@contextlib.contextmanager
def friendly_errors():
    """Errors become one readable message on the page, never a traceback."""
    try:
        yield
    except CifarError as exc:
        st.error(str(exc))
    except Exception as exc:  # noqa: BLE001 - the page must stay usable whatever happens
        _log.exception("dashboard page failed")
        st.error(f"This page could not be shown ({exc.__class__.__name__}: {exc}). "
                 "The other pages still work; reload to try again.")
