"""Learning curves: training and validation loss, accuracy and learning rate
of the selected runs, overlaid by epoch, wall time or training time; test
accuracy per epoch too for runs trained with --track-test."""

import streamlit as st

from cifar import dashboard as d
from pages import _charts, _common

# Short headers, so that long run names and every column fit at 1440 px.
GAP_HEADERS = {"Training accuracy": ("Train acc.", "Training accuracy at the best epoch"),
               "Validation accuracy": ("Val. acc.", "Validation accuracy at the best epoch"),
               "Accuracy gap at best epoch": ("Gap (best)", "Training minus validation accuracy, best epoch"),
               "Accuracy gap at last epoch": ("Gap (last)", "Training minus validation accuracy, last epoch"),
               "Loss gap at last epoch": ("Loss gap (last)", "Validation minus training loss, last epoch")}

_common.start_page("Learning curves")
run_ids = _common.require_selection()
names = _common.labels()
histories = _common.tables(run_ids, "history")
best_epochs = {names[r]: _common.metadata(r).get("best_epoch") for r in run_ids}

metric_col, x_col = st.columns([2, 3], vertical_alignment="bottom")
metric = metric_col.segmented_control("Show", list(d.CURVE_METRICS), default="Accuracy", required=True,
                                      key="metric", bind="query-params")
x_axis = x_col.segmented_control("Against", list(d.CURVE_X), default="Epoch", required=True, key="x",
                                 bind="query-params",
                                 help="Wall time counts everything; training time only the training batches "
                                      "(no evaluation or saving): the time-to-accuracy view")
smooth_col, gap_col, _ = st.columns([2, 2, 1], vertical_alignment="bottom")
smoothing = smooth_col.slider("Smoothing", 0.0, 0.95, 0.0, 0.05, key="smooth", bind="query-params",
                              help="Exponential moving average, as in TensorBoard: 0 shows the raw values")
shade = gap_col.toggle("Shade the gap", value=True, key="shade", bind="query-params",
                       help="Shade between each run's training and validation curves")

# A bound control reads its value from the address: an empty or unknown one leaves it unset.
metric, x_axis = metric or "Accuracy", x_axis or "Epoch"
untimed = d.runs_without_x(histories, x_axis)
if untimed:
    st.info(f"Not drawn against {x_axis.lower()}: {', '.join(untimed)} did not record the time of each epoch. "
            "Choose **Epoch** to see every run.", icon=":material/timer_off:")
long = d.curves_long(histories, metric, x_axis, smoothing)
if long.empty:
    st.info(f"None of the selected runs recorded {metric.lower()} per epoch.")
    st.stop()
if metric == "Loss":
    note = d.label_smoothing_note({names[r]: (_common.metadata(r).get("config") or {}).get("label_smoothing")
                                   for r in run_ids if names[r] in histories})
    if note:
        st.warning(note, icon=":material/compare_arrows:")
best = d.best_epoch_points(histories, best_epochs, metric, x_axis, smoothing)
colours = _charts.run_colours(histories)
st.plotly_chart(_charts.curves(long, best, colours, metric, x_axis, shade and metric != "Learning rate"),
                width="stretch")
st.caption("Solid: validation. Dotted: training. The shaded band between them is the generalisation gap; "
           "a wide band means the model learns its training images better than new ones (overfitting). "
           "★ marks the best validation epoch: its weights are the ones kept when the run used early "
           "stopping; otherwise the last epoch's are. Runs without a validation split get no ★. Dashed: test "
           "accuracy after every epoch, for runs trained with `--track-test` (one view per image, so below the "
           "final figure of a model with test-time augmentation; reporting only, it never picks an epoch).")

st.subheader("Gap between training and validation")
gap = d.generalization_gap(histories, best_epochs)
without = [label for label, history in histories.items() if not d.has_validation(history)]
if without:
    st.info(f"No gap for {', '.join(without)}: {'it was' if len(without) == 1 else 'they were'} trained on "
            "every training image, with no validation split to compare against (fast_cnn's recipe, like "
            "airbench94's).", icon=":material/info:")
if not gap.empty:
    percent = ["Training accuracy", "Validation accuracy", "Accuracy gap at best epoch", "Accuracy gap at last epoch"]
    st.dataframe(gap.style.format({c: "{:.1%}" for c in percent} | {"Loss gap at last epoch": "{:.3f}"}),
                 hide_index=True, width="stretch",
                 column_config={column: st.column_config.Column(header, help=help_text)
                                for column, (header, help_text) in GAP_HEADERS.items()})
    st.caption("Gaps are training minus validation accuracy: near zero is healthy, ten points or more is clear "
               "overfitting.")
