"""Confusion: where each run goes wrong, two runs side by side and their
difference, cat versus dog, the most-confused pairs with the test images
behind them, and per-class scores. Only the open tab is computed."""

import streamlit as st

from cifar import CLASS_NAMES, dashboard as d
from pages import _charts, _common, _explain

PERCENT = "{:.1%}"  # one decimal everywhere (Streamlit's "percent" drops trailing zeros: 13% beside 12.45%)
SCORES = {"f1": "F1", "precision": "Precision", "recall": "Recall"}

_common.start_page("Confusion")
run_ids = _common.require_selection()
names = _common.labels()
confusions = _common.tables(run_ids, "confusion")
shown = [r for r in run_ids if names[r] in confusions]  # run ids, so a copied link names the runs
if not shown:
    st.stop()

pick_first, pick_second, pick_scale = st.columns([3, 3, 2], vertical_alignment="bottom")
_common.run_in_url("first", shown, shown[0])
first_id = pick_first.selectbox("Run", shown, format_func=names.get, key="first")
others = [r for r in shown if r != first_id]
_common.run_in_url("second", [None, *others], others[0] if others else None)
second_id = pick_second.selectbox("Compare with", [None, *others], key="second", placeholder="No second run",
                                  format_func=lambda r: "No second run" if r is None else names[r])
_common.keep_in_url("first", first_id, shown[0])
_common.keep_in_url("second", second_id or "none", others[0] if others else "none")
normalized = pick_scale.toggle("Share of each true class", value=True, key="share", bind="query-params",
                               help="On: each row shows how that class's test images were predicted, in %. "
                                    "Off: image counts.")
first, second = names[first_id], names.get(second_id)
matrices, cat_dog_tab, mistakes, per_class_tab = st.tabs(
    ["Matrices", "Cat versus dog", "Most-confused pairs", "Per-class scores"],
    key="confusion_view", bind="query-params")  # only the open tab is computed and drawn

if matrices.open:
    left, right = matrices.columns(2)
    left.plotly_chart(_charts.heatmap(d.confusion_matrix(confusions[first], normalized), first, normalized),
                      width="stretch")
    if second:
        difference = d.confusion_difference(confusions[first], confusions[second], normalized)
        right.plotly_chart(_charts.heatmap(d.confusion_matrix(confusions[second], normalized), second,
                                           normalized), width="stretch")
        change, explanation = matrices.columns(2, vertical_alignment="center")
        change.plotly_chart(_charts.heatmap(difference, "Change from the first run to the second", normalized,
                                            better=d.difference_is_better(difference)), width="stretch")
        explanation.markdown("**How to read the change.** Each cell is the second run minus the first. "
                             "**Blue** cells are where the second run does better: more correct answers on the "
                             "diagonal, fewer mistakes off it. **Red** cells are where it does worse.")

if cat_dog_tab.open:
    cat_dog = d.cat_dog_table(confusions)
    cat_dog_tab.dataframe(cat_dog.style.format({"Share of cats": PERCENT, "Share of dogs": PERCENT}, na_rep="—"),
                          hide_index=True)
    cat_dog_tab.plotly_chart(_charts.cat_dog(cat_dog), width="stretch")

if mistakes.open:
    pairs = d.most_confused_pairs(confusions)

    def show_pair_images() -> None:
        rows = st.session_state.pairs.selection.rows
        if rows:
            st.session_state.true_class = pairs["True class"].iloc[rows[0]]
            st.session_state.predicted_class = pairs["Predicted as"].iloc[rows[0]]

    mistakes.dataframe(pairs.style.format({"Average share of true class": PERCENT}), hide_index=True, key="pairs",
                       on_select=show_pair_images, selection_mode="single-row")
    mistakes.caption("Ranked by the share of the true class sent to the wrong class, averaged over the selected "
                     "runs; the other columns count images per run. Select a row to see its images below.")
    mistakes.subheader(f"Test images behind a mistake, from {first}")
    pick_true, pick_predicted = mistakes.columns(2)
    true_class = pick_true.selectbox("True class", CLASS_NAMES, index=d.CAT, key="true_class",
                                     bind="query-params")
    predicted_class = pick_predicted.selectbox("Predicted as", CLASS_NAMES, index=d.DOG, key="predicted_class",
                                               bind="query-params")
    # An empty ?true_class= in the address leaves a bound box unset.
    true_class, predicted_class = true_class or CLASS_NAMES[d.CAT], predicted_class or CLASS_NAMES[d.DOG]
    images = d.gallery_for_pair(_common.table(first_id, "gallery"), _common.table(first_id, "predictions"),
                                CLASS_NAMES.index(true_class), CLASS_NAMES.index(predicted_class))
    in_test = int(d.confusion_matrix(confusions[first]).loc[true_class, predicted_class])
    if images.empty:
        mistakes.info(f"No test image of a {true_class} was predicted as {predicted_class} by this run.")
    else:
        mistakes.caption(f"{len(images)} of the {in_test} test images of a **{true_class}** predicted as "
                         f"**{predicted_class}** (the run keeps a sample of each pair). Under each: the model's "
                         "three most likely classes.")
        for start in range(0, len(images), 8):
            for cell, row in zip(mistakes.columns(8), images.iloc[start:start + 8].itertuples()):
                _explain.gallery_image(cell, first_id, images, row)

if per_class_tab.open:
    score = per_class_tab.segmented_control("Score", list(SCORES), format_func=SCORES.get, default="f1",
                                            required=True, key="score", bind="query-params") or "f1"
    per_class = d.per_class_comparison(_common.tables(run_ids, "per_class"), score)
    runs_shown = per_class.columns.drop("Class")
    per_class_tab.plotly_chart(_charts.per_class(per_class, SCORES[score], _charts.run_colours(runs_shown)),
                               width="stretch")
    per_class_tab.dataframe(per_class, hide_index=True, width="stretch",
                            column_config={c: st.column_config.NumberColumn(format="%.3f") for c in runs_shown})
