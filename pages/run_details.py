"""Run details: one run's settings, environment, data, per-epoch table and
files, with downloads; the team marks a run as reference or hides it here."""

import functools

import streamlit as st

from cifar import artifacts, auth, dashboard as d, run_marks
from cifar.errors import CifarError
from pages import _common

_common.start_page("Run details")
run_ids = _common.require_selection()
names = _common.labels()
# Every run, hidden ones too (listed last), so a hidden run can be found and shown again.
hidden = _common.marks().hidden
choices = run_ids + [r for r, _ in _common.runs() if r not in run_ids and r not in hidden] + \
    [r for r, _ in _common.runs() if r in hidden and r not in run_ids]
_common.run_in_url("details_run", choices, choices[0])
run_id = st.selectbox("Run", choices, key="details_run",
                      format_func=lambda r: names[r] + (" · hidden" if r in hidden else ""))
_common.keep_in_url("details_run", run_id, choices[0])
metadata = _common.metadata(run_id)
metrics = _common.table(run_id, "metrics").iloc[0]

st.caption(f"Run id `{run_id}` · {metadata.get('recipe_summary') or metadata.get('model')}")
cells = st.columns(6)
cells[0].metric("Test accuracy", f"{metrics.test_accuracy:.1%}")
cells[1].metric("Macro F1", f"{metrics.f1_macro:.3f}")
cells[2].metric("Test loss", f"{metrics.test_loss:.3f}")
cells[3].metric("Epochs run / best", f"{metadata.get('epochs_run')} / {d.best_epoch_text(metadata)}",
                help="Best: the epoch with the highest validation accuracy; none without a validation split")
cells[4].metric("Training time", f"{(metadata.get('train_seconds') or 0) / 60:.1f} min")
cells[5].metric("Latency per image", f"{metrics.latency_ms:.1f} ms")
if metadata.get("imagenet_weights") is False:
    st.warning("This transfer model was trained **without ImageNet weights** (random start): "
               "its numbers are not comparable with an ImageNet-initialised run.")
if d.run_tags(metadata):
    st.info(f"A partial run ({'; '.join(d.run_tags(metadata))}): its numbers are not comparable with a full run.",
            icon=":material/content_cut:")

settings, environment, data, history, files = st.tabs(
    ["Settings", "Environment", "Data", "Per-epoch history", "Files and downloads"],
    key="details_view", bind="query-params")  # only the open tab is drawn
if settings.open:
    settings.dataframe(d.settings_table(metadata), hide_index=True, width="stretch")
if environment.open:
    environment.dataframe(d.environment_table(metadata), hide_index=True, width="stretch")
if data.open:
    data.dataframe(d.data_table(metadata), hide_index=True, width="stretch")
if history.open:
    history.dataframe(d.history_table(_common.table(run_id, "history")), hide_index=True, width="stretch")
if files.open:
    sizes = artifacts.run_file_sizes(run_id)
    files.dataframe(d.file_sizes(sizes), hide_index=True)
    for name in sizes:  # the bytes are read (and checksummed) only when a download is asked for
        files.download_button(f"Download {name}", data=functools.partial(artifacts.read_run_file, run_id, name),
                              file_name=f"{run_id}-{name}", key=f"download-{name}", on_click="ignore",
                              icon=":material/download:")


def mark(which: str, on: bool) -> None:
    """Button callback: check the retraining rights, then set the mark."""
    try:
        who = auth.authorize(auth.current_policy(), auth.current_user(), st.session_state.get("marks_token"))
        run_marks.set_mark(run_id, which, on, by=who)
    except CifarError as exc:
        st.session_state.marks_message = f"Not changed: {exc}"


with st.expander("Reference or hidden (for the team)", icon=":material/push_pin:"):
    current = _common.marks()
    st.caption("A **reference** run keeps its place in every visitor's default selection and is starred. A "
               "**hidden** run leaves the pickers and the Models table; its files stay, and it can be shown "
               "again here. Both need the same rights as retraining.")
    if auth.current_policy().needs_token:
        st.text_input("Team token", type="password", key="marks_token")
    if "marks_message" in st.session_state:
        st.error(st.session_state.pop("marks_message"), icon=":material/lock:")
    reference, hide = st.columns(2)
    is_reference, is_hidden = run_id in current.reference, run_id in current.hidden
    reference.button("Remove the reference mark" if is_reference else "Mark as a reference run",
                     on_click=mark, args=("reference", not is_reference), icon=":material/star:")
    hide.button("Show on the dashboard again" if is_hidden else "Hide from the dashboard",
                on_click=mark, args=("hidden", not is_hidden), icon=":material/visibility_off:")
