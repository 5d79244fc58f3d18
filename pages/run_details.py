"""Run details: one run's settings, environment, data, per-epoch table and
files, with downloads."""

import functools

import streamlit as st

from cifar import artifacts, dashboard as d
from pages import _common

_common.start_page("Run details")
run_ids = _common.require_selection()
names = _common.labels()
run_id = st.selectbox("Run", run_ids, format_func=names.get)
metadata = _common.metadata(run_id)
metrics = _common.table(run_id, "metrics").iloc[0]

st.caption(f"Run id `{run_id}` · {metadata.get('recipe_summary') or metadata.get('model')}")
cells = st.columns(6)
cells[0].metric("Test accuracy", f"{metrics.test_accuracy:.1%}")
cells[1].metric("Macro F1", f"{metrics.f1_macro:.3f}")
cells[2].metric("Test loss", f"{metrics.test_loss:.3f}")
cells[3].metric("Epochs run / best", f"{metadata.get('epochs_run')} / {metadata.get('best_epoch')}")
cells[4].metric("Training time", f"{(metadata.get('train_seconds') or 0) / 60:.1f} min")
cells[5].metric("Latency per image", f"{metrics.latency_ms:.1f} ms")
if metadata.get("imagenet_weights") is False:
    st.warning("This transfer model was trained **without ImageNet weights** (random start): "
               "its numbers are not comparable with an ImageNet-initialised run.")

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
    history.dataframe(_common.table(run_id, "history"), hide_index=True, width="stretch")
if files.open:
    sizes = artifacts.run_file_sizes(run_id)
    files.dataframe(d.file_sizes(sizes), hide_index=True)
    for name in sizes:  # the bytes are read (and checksummed) only when a download is asked for
        files.download_button(f"Download {name}", data=functools.partial(artifacts.read_run_file, run_id, name),
                              file_name=f"{run_id}-{name}", key=f"download-{name}", on_click="ignore",
                              icon=":material/download:")
