"""Learning curves: training and validation loss, accuracy and learning rate
of the selected runs, overlaid by epoch, wall time or training time; test
accuracy per epoch too for runs trained with --track-test."""

import streamlit as st

from cifar import dashboard as d
from pages import _charts, _common

_common.start_page("Learning curves")
run_ids = _common.require_selection()
names = _common.labels()
histories = _common.tables(run_ids, "history")
best_epochs = {names[r]: _common.metadata(r).get("best_epoch") for r in run_ids}

metric_col, x_col, smooth_col, gap_col = st.columns([2, 3, 2, 1], vertical_alignment="bottom")
metric = metric_col.segmented_control("Show", list(d.CURVE_METRICS), default="Accuracy", required=True,
                                      key="metric", bind="query-params")
x_axis = x_col.segmented_control("Against", list(d.CURVE_X), default="Epoch", required=True, key="x",
                                 bind="query-params",
                                 help="Wall time counts everything; training time only the training batches "
                                      "(no evaluation or saving): the time-to-accuracy view")
smoothing = smooth_col.slider("Smoothing", 0.0, 0.95, 0.0, 0.05, key="smooth", bind="query-params",
                              help="Exponential moving average, as in TensorBoard: 0 shows the raw values")
shade = gap_col.toggle("Shade gap", value=True, help="Shade between each run's training and validation curves")

long = d.curves_long(histories, metric, x_axis, smoothing)
if long.empty:
    st.info(f"None of the selected runs recorded {metric.lower()} per epoch.")
    st.stop()
best = d.best_epoch_points(histories, best_epochs, metric, x_axis, smoothing)
colours = _charts.run_colours(histories)
st.plotly_chart(_charts.curves(long, best, colours, metric, x_axis, shade and metric != "Learning rate"),
                width="stretch")
st.caption("Solid: validation. Dotted: training. The shaded band between them is the generalisation gap; "
           "a wide band means the model learns its training images better than new ones (overfitting). "
           "★ marks the best validation epoch: its weights are the ones kept when the run used early "
           "stopping; otherwise the last epoch's are. Dashed: test accuracy after every epoch, for runs "
           "trained with `--track-test` (one view per image, so below the final figure of a model with "
           "test-time augmentation; reporting only, it never picks an epoch).")

st.subheader("Gap between training and validation")
gap = d.generalization_gap(histories, best_epochs)
st.dataframe(gap, hide_index=True, column_config={
    c: st.column_config.NumberColumn(format="percent") for c in gap.columns if "ccuracy" in c} | {
    "Loss gap at last epoch": st.column_config.NumberColumn(format="%.3f",
                                                            help="Validation loss minus training loss")})
st.caption("Accuracy gaps are training minus validation accuracy: near zero is healthy, ten points or more "
           "is clear overfitting.")
