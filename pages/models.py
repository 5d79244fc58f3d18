"""Models: every run as one row of the study's results table, and the
cost/benefit frontier of accuracy against size and speed."""

import pandas as pd
import streamlit as st

from cifar import dashboard as d
from pages import _charts, _common

FORMATS = {d.PARAMS: "{:,.0f}", d.LAYERS: "{:.0f}", d.EPOCHS: "{:.0f}", d.BEST_EPOCH: "{:.0f}",
           d.ACCURACY: "{:.1%}", d.LOSS: "{:.3f}", d.F1: "{:.3f}", d.RECALL: "{:.3f}",
           d.TRAIN_MINUTES: "{:.1f}", d.LATENCY: "{:.1f}"}
HELP = {d.LATENCY: "Median time to classify one image, measured on the machine that trained the run",
        d.TRAIN_MINUTES: "Time spent in training epochs, on the hardware shown",
        d.PARAMS: "Total weights, trainable and frozen", d.F1: "F1 averaged over the 10 classes",
        d.IMAGENET: "Transfer models: whether training started from ImageNet weights",
        d.ACCURACY_CI: "95% Wilson score interval of the test accuracy, over the run's test images"}


def styled(table: pd.DataFrame):
    best, study = d.best_cells(table), table[d.SOURCE] == d.STUDY_SOURCE

    def colours(frame: pd.DataFrame) -> pd.DataFrame:
        styles = pd.DataFrame("", index=frame.index, columns=frame.columns)
        styles.loc[study] = "color: #52525b; background-color: #f4f4f5"
        return styles.mask(best, "background-color: #bbf7d0; color: #14532d")
    return table.style.apply(colours, axis=None).format(FORMATS, na_rep="—")


_common.start_page("Models", expand_warnings=True)
measured = _common.comparison()
if measured.empty:
    _common.no_runs_message()

left, middle, right = st.columns([3, 3, 2], vertical_alignment="bottom")
models = left.multiselect("Model", sorted(measured[d.MODEL].dropna().unique()), placeholder="All models")
text = middle.text_input("Search runs and notes", placeholder="e.g. resnet, augment, a run's last 4 characters")
show_study = right.toggle("Show the study's results", value=True,
                          help="The published Figure 2.1 of the study, as grey reference rows")

shown = d.filter_table(measured, models, text)
if show_study:
    shown = pd.concat([shown, d.filter_table(_common.study_rows(), None, text)], ignore_index=True)
table_tab, chart_tab = st.tabs(["Results table", "Accuracy against cost"],
                              key="models_view", bind="query-params")  # only the open tab is drawn

if table_tab.open:
    table_tab.dataframe(styled(shown), hide_index=True, column_order=d.TABLE_COLUMNS,
                        height=min(36 + 35 * len(shown), 640),
                        column_config={d.RUN: st.column_config.Column(pinned=True)} |
                                      {c: st.column_config.Column(help=h) for c, h in HELP.items()})
    table_tab.caption(f"{len(shown)} rows. Click a column header to sort. **Green**: the best measured value in "
                      "its column (highest accuracy, F1 and recall; lowest loss, time, latency and parameters). "
                      "**Grey rows** are the study's published results (Figure 2.1): measured by its authors on "
                      "their hardware, not re-run here, and never counted as best. **Accuracy 95% CI**: Wilson score "
                      "interval over the run's test images; whether two runs really differ is on the Compare page.")

if chart_tab.open:
    runs_shown = shown[shown[d.SOURCE] == d.MEASURED_SOURCE]
    study_shown = shown[shown[d.SOURCE] == d.STUDY_SOURCE]
    size_chart, speed_chart = chart_tab.columns(2)
    size_chart.plotly_chart(_charts.frontier(runs_shown, d.PARAMS, "Accuracy against model size", study_shown),
                            width="stretch")
    speed_chart.plotly_chart(_charts.frontier(runs_shown, d.LATENCY, "Accuracy against latency per image"),
                             width="stretch")
    chart_tab.caption("The dashed line joins the runs that nothing beats: no other run is both more accurate "
                      "and cheaper. The study reports no latency, so its diamonds appear on the size chart only.")
