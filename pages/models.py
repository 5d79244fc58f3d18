"""Models: the selected runs as rows of the study's results table, results
first, and the cost/benefit frontier of accuracy against size and speed."""

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
        d.ACCURACY_CI: "95% Wilson score interval of the test accuracy, over the run's test images",
        d.RUN_TYPE: "★ Reference: marked by the team (Run details). Subset N/class: trained on N images per "
                    "class. Short E/R epochs: E of its recipe's R epochs. Neither is comparable with a full run."}


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

left, right = st.columns(2, vertical_alignment="bottom")
models = left.multiselect("Model", sorted(measured[d.MODEL].dropna().unique()), placeholder="All models",
                          key="model", bind="query-params")
text = right.text_input("Search runs and notes", placeholder="e.g. resnet, augment, a run's last 4 characters",
                         key="search", bind="query-params")
study_toggle, scope_toggle, details_toggle = st.columns(3)
show_study = study_toggle.toggle("Show the study's results", value=True, key="study", bind="query-params",
                          help="The published Figure 2.1 of the study, as grey reference rows")
every_run = scope_toggle.toggle("Every run, not only those selected", value=False, key="all_runs", bind="query-params",
                         help="Off: the runs chosen in the sidebar under Runs to compare. On: every run on disk "
                              "except those the team has hidden.")
details = details_toggle.toggle("Architecture and training details", value=False, key="details", bind="query-params",
                       help="Model, parameters, layers, augmentation, optimizer, hardware and notes")

chosen = _common.selected()
visible = {run_id for run_id, _ in _common.visible_runs()}
in_scope = measured.run_id.isin(visible) if every_run else measured.run_id.isin(chosen)
shown = d.filter_table(measured[in_scope], models, text)
if show_study:
    shown = pd.concat([shown, d.filter_table(_common.study_rows(), None, text)], ignore_index=True)
table_tab, chart_tab = st.tabs(["Results table", "Accuracy against cost"],
                              key="models_view", bind="query-params")  # only the open tab is drawn

if table_tab.open:
    columns = d.TABLE_COLUMNS if details else d.RESULT_COLUMNS
    table_tab.dataframe(styled(shown), hide_index=True, column_order=columns, placeholder="—",
                        height=min(36 + 35 * len(shown), 640),
                        column_config={d.RUN: st.column_config.Column(pinned=True)} |
                                      {c: st.column_config.Column(help=h) for c, h in HELP.items()})
    hidden = len(measured) - len(visible)
    scope = (f"every run on disk but {hidden} hidden" if every_run and hidden else "every run on disk" if every_run
             else f"the {len(chosen)} run{'s' if len(chosen) != 1 else ''} selected in the sidebar")
    table_tab.caption(f"{len(shown)} row{'s' if len(shown) != 1 else ''}: {scope}"
                      f"{' and the study' if show_study else ''}. Click a column header to sort. **Green**: the "
                      "best measured value in its column (highest accuracy, F1 and recall; lowest loss, time, "
                      "latency and parameters). **Grey rows** are the study's published results (Figure 2.1): "
                      "measured by its authors on their hardware, not re-run here, and never counted as best. "
                      "**Accuracy 95% CI**: Wilson score interval over the run's test images; whether two runs "
                      "really differ is on the Compare page.")

if chart_tab.open:
    runs_shown = shown[shown[d.SOURCE] == d.MEASURED_SOURCE]
    study_shown = shown[shown[d.SOURCE] == d.STUDY_SOURCE]
    size_chart, speed_chart = chart_tab.columns(2)
    size_chart.plotly_chart(_charts.frontier(runs_shown, d.PARAMS, "Accuracy against model size", study_shown),
                            width="stretch")
    speed_chart.plotly_chart(_charts.frontier(runs_shown, d.LATENCY, "Accuracy against latency per image"),
                             width="stretch")
    chart_tab.caption("The dashed line joins the full runs that nothing beats: no other run is both more accurate "
                      "and cheaper (subset and short runs are shown but never join it). The study reports no "
                      "latency, so its diamonds (hover for their names) appear on the size chart only.")
