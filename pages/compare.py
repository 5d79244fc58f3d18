"""Compare: is one run really better than another (paired tests), can its
confidence be trusted (calibration), and on which test images do the runs
part ways (disagreements, label doubts). Everything shown is computed by
cifar.compare; only the open tab is computed."""

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from cifar import CLASS_NAMES, artifacts, compare as c, dashboard as d
from pages import _charts, _common

SHOWN = 24  # images per page of the grid
RIGHT, WRONG = ":green[:material/check_circle:]", ":red[:material/cancel:]"
POINTS = st.column_config.NumberColumn(format="%+.1f")
SHARE = st.column_config.NumberColumn(format="percent")
P_VALUE = st.column_config.NumberColumn(format="%.2g")


@st.cache_data(show_spinner=False, max_entries=64)
def validation(run_id: str, on_disk: int) -> pd.DataFrame | None:
    """The run's optional validation probabilities (None for runs without)."""
    return artifacts.read_optional_table(run_id, "val_predictions")


def pct(value: float) -> str:
    return f"{value:.1%}"


def image_cards(container, rows: pd.DataFrame, aligned: c.Aligned, images: dict[int, bytes], extra=None) -> None:
    """Two images per row, each enlarged, with every run's top 3 beside it."""
    for start in range(0, len(rows), 2):
        cells = container.columns(2)
        for cell, row in zip(cells, rows.iloc[start:start + 2].itertuples()):
            picture, text = cell.columns([1, 3])
            enlarged = None if images.get(row.index) is None else d.enlarge_png(images[row.index])
            if enlarged is None:
                picture.caption("no picture stored" if images.get(row.index) is None else "stored picture damaged")
            else:
                picture.image(enlarged, width="stretch")
            heading = f"**#{row.index}** · true class **{row.true_class}**" + (f" · {extra(row)}" if extra else "")
            lines = [f"{RIGHT if line['correct'] else WRONG} {line['run']}: {line['text']}"
                     for line in c.top_k_lines(aligned, row.position)]
            text.markdown("  \n".join([heading, *lines]))


def reliability_figure(table: pd.DataFrame, colours: dict[str, str]) -> go.Figure:
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.72, 0.28], vertical_spacing=0.06)
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="Perfectly calibrated",
                             line=dict(color="#a1a1aa", dash="dash")), row=1, col=1)
    for (run, scaled), group in table.groupby(["run", "scaled"], sort=False):
        shown, name = group[group["count"] > 0], f"{run} after temperature scaling" if scaled else run
        fig.add_trace(go.Scatter(x=shown.confidence, y=shown.accuracy, mode="lines+markers", name=name,
                                 line=dict(color=colours[run], dash="dot" if scaled else "solid"),
                                 customdata=shown["count"],
                                 hovertemplate="confidence %{x:.2f}<br>accuracy %{y:.2f}<br>"
                                               "%{customdata:,} images<extra>" + name + "</extra>"),
                      row=1, col=1)
        if scaled:
            continue  # the counts below are the test images as the run scored them
        fig.add_trace(go.Bar(x=(group.lower + group.upper) / 2, y=group["count"], name=run, showlegend=False,
                             marker_color=colours[run], width=1 / c.BINS / (len(colours) + 0.5),
                             hovertemplate="%{y:,} images<extra>" + run + "</extra>"), row=2, col=1)
    fig.update_layout(title="Reliability: accuracy against confidence", barmode="group", height=560,
                      margin=dict(l=10, r=10, t=50, b=10), legend=dict(orientation="h", y=-0.12, x=0))
    fig.update_yaxes(title_text="Accuracy", range=[0, 1], row=1, col=1)
    fig.update_yaxes(title_text="Images", type="log", dtick=1, row=2, col=1)
    fig.update_xaxes(title_text="Confidence (top class's probability), 15 bins", range=[0, 1], row=2, col=1)
    return fig


_common.start_page("Compare")
run_ids = _common.require_selection()
names = _common.labels()
predictions = _common.tables(run_ids, "predictions")
ids_by_label = {names.get(r, r): r for r in run_ids}
runs = {label: (_common.metadata(ids_by_label[label]), frame) for label, frame in predictions.items()}
kept, problems = c.split_pairable(runs) if runs else ([], {})
for problem in problems.values():
    st.warning(f"{problem}. It is left out here.", icon=":material/link_off:")
if len(kept) < 2:
    st.info("Choose two or more runs evaluated on the same test set in the sidebar under **Runs to compare**.",
            icon=":material/arrow_back:")
    st.stop()

aligned = c.align({label: predictions[label] for label in kept})
pick_a, pick_b = st.columns(2)
run_a = pick_a.selectbox("Run A", kept, key="run_a")
run_b = pick_b.selectbox("Run B", [label for label in kept if label != run_a], key="run_b")
pairs = c.pairwise(aligned)
pair = pairs[((pairs.A == run_a) & (pairs.B == run_b)) | ((pairs.A == run_b) & (pairs.B == run_a))].iloc[0].to_dict()
if pair["A"] != run_a:  # the family's row for this pair, read A against B
    pair = c.reversed_pair(pair)
st.markdown(f"#### {c.headline(pair)}")

difference_tab, calibration_tab, explorer_tab, doubts_tab = st.tabs(
    ["Is the difference real?", "Calibration", "Where they differ", "Label doubts"],
    key="compare_view", bind="query-params")  # only the open tab is computed and drawn

if difference_tab.open:
    n = len(aligned.truth)
    first, second, third = difference_tab.columns(3)
    for cell, side, label, accuracy in ((first, "A", run_a, pair["accuracy_a"]),
                                        (second, "B", run_b, pair["accuracy_b"])):
        low, high = c.accuracy_interval(round(accuracy * n), n)
        cell.metric(f"Accuracy of {side}", pct(accuracy), border=True)
        cell.caption(f"{label}: 95% CI {pct(low)} to {pct(high)} (Wilson, {n:,} test images)")
    third.metric("A − B", f"{100 * pair['difference']:+.1f} points", border=True)
    third.caption(f"95% CI {100 * pair['ci_low']:+.1f} to {100 * pair['ci_high']:+.1f} points "
                  "(paired bootstrap)")

    table_side, test_side = difference_tab.columns([2, 3])
    table_side.dataframe(pd.DataFrame({"B right": [pair["both_right"], pair["b_only"]],
                                       "B wrong": [pair["a_only"], pair["both_wrong"]]},
                                      index=["A right", "A wrong"]))
    method = "exact binomial" if pair["exact"] else "chi-squared with continuity correction"
    family = (f" Holm-corrected over the {len(pairs)} pairs of the {len(kept)} runs: {c.p_text(pair['p_holm'])}."
              if len(pairs) > 1 else "")
    test_side.markdown(f"**McNemar's test** ({method}) looks only at the {pair['a_only'] + pair['b_only']:,} "
                       f"images where exactly one run is right ({pair['a_only']:,} for A, {pair['b_only']:,} "
                       f"for B): {c.p_text(pair['p_value'])}.{family}")

    difference_tab.subheader("Per class")
    by_class = c.per_class(aligned, run_a, run_b)
    difference_tab.dataframe(
        pd.DataFrame({"Class": by_class["class"], "Images": by_class.images, "Accuracy A": by_class.accuracy_a,
                      "Accuracy B": by_class.accuracy_b, "A − B (points)": 100 * by_class.difference,
                      "95% CI low": 100 * by_class.ci_low, "95% CI high": 100 * by_class.ci_high,
                      "A right, B wrong": by_class.a_only, "B right, A wrong": by_class.b_only,
                      "p (Holm over classes)": by_class.p_holm}),
        hide_index=True, column_config={"Accuracy A": SHARE, "Accuracy B": SHARE, "A − B (points)": POINTS,
                                        "95% CI low": POINTS, "95% CI high": POINTS,
                                        "p (Holm over classes)": P_VALUE})
    if len(kept) > 2:
        difference_tab.subheader("Every pair")
        left, right = difference_tab.columns(2)
        left.caption("Holm-corrected McNemar p-values")
        left.dataframe(c.pair_matrix(pairs, kept, "p_holm"), column_config={k: P_VALUE for k in kept})
        right.caption("Accuracy difference, row minus column (points)")
        right.dataframe(100 * c.pair_matrix(pairs, kept, "difference"), column_config={k: POINTS for k in kept})
    difference_tab.caption("Intervals are 95%: accuracies by Wilson's score interval, differences by a paired "
                           "bootstrap of the test images (2,000 resamples, seed 0). p < 0.05 counts as evidence.")

if calibration_tab.open:
    on_disk = hash(artifacts.runs_signature())
    scores = c.calibration(aligned, {label: validation(ids_by_label[label], on_disk) for label in kept},
                           {label: runs[label][0] for label in kept})
    colours = _charts.run_colours(kept)
    calibration_tab.plotly_chart(reliability_figure(
        c.reliability(aligned, dict(zip(scores.run, scores.temperature))), colours), width="stretch")
    calibration_tab.dataframe(
        pd.DataFrame({"Run": scores.run, "ECE": scores.ece, "Classwise ECE": scores.classwise_ece,
                      "NLL": scores.nll, "Brier": scores.brier, "Temperature": scores.temperature,
                      "ECE after": scores.ece_scaled, "NLL after": scores.nll_scaled}),
        hide_index=True, column_config={k: st.column_config.NumberColumn(format="%.3f") for k in
                                        ("ECE", "Classwise ECE", "NLL", "Brier", "Temperature", "ECE after",
                                         "NLL after")})
    for note in scores.note[scores.note != ""]:
        calibration_tab.info(note, icon=":material/info:")
    calibration_tab.caption(
        "On the test images. **ECE**: the gap between confidence and accuracy, averaged over 15 equal-width "
        "bins weighted by their images (0 is perfect). **Classwise ECE**: the same for each class's probability, "
        "averaged over classes. **NLL**: mean negative log-likelihood of the true class. **Brier**: mean squared "
        "distance to the one-hot label (0 to 2). **Temperature**: one number fitted on the run's validation "
        "images to minimise NLL; *after* columns are the test figures once probabilities are softened (T > 1) or "
        "sharpened (T < 1) by it. Points below the diagonal: over-confident; above: under-confident.")

if explorer_tab.open:
    counts = c.disagreement_counts(aligned, run_a, run_b)
    titles = {c.DISAGREE: "The runs disagree", c.A_ONLY: "A right, B wrong", c.B_ONLY: "B right, A wrong",
              c.ALL_WRONG: "All runs wrong" if len(kept) > 2 else "Both wrong"}
    for cell, kind in zip(explorer_tab.columns(4), c.FILTERS):
        cell.metric(titles[kind], f"{counts[kind]:,}", border=True)
    kind = explorer_tab.segmented_control("Show", c.FILTERS, format_func=titles.get, default=c.DISAGREE,
                                       required=True, key="explore")
    class_side, confidence_side, picture_side = explorer_tab.columns([2, 2, 2], vertical_alignment="bottom")
    true_class = class_side.selectbox("True class", [None, *CLASS_NAMES], key="explore_class",
                                      format_func=lambda name: "All classes" if name is None else name)
    floor = confidence_side.slider("Wrong answer at least this sure", 0.0, 1.0, 0.0, 0.05, key="explore_floor",
                                   help="The highest probability a wrong run gives its wrong answer")
    pictured_only = picture_side.toggle("Only images with a stored picture", value=True, key="explore_pictured",
                                        help="Runs keep only a sample of their test images (up to 16 mistakes per "
                                             "pair of classes and 6 correct per class); off, the others are listed "
                                             "with their probabilities alone.")
    found = c.disagreements(aligned, run_a, run_b, kind, true_class, floor)
    images = c.image_lookup(_common.tables([ids_by_label[label] for label in kept], "gallery").values())
    with_picture = found[found["index"].isin(images)]
    shown = (with_picture if pictured_only else found).head(SHOWN)
    explorer_tab.markdown(f"**{len(found):,} test images** match, {len(with_picture):,} of them with a stored "
                          f"picture; the {len(shown)} with the surest wrong answer are shown. "
                          f"A is {run_a}, B is {run_b}.")
    image_cards(explorer_tab, shown, aligned, images,
                extra=lambda row: "" if pd.isna(row.wrong_confidence) else
                f"wrong answer {row.wrong_confidence:.1%} sure")

if doubts_tab.open:
    threshold = doubts_tab.slider("Every run at least this sure of one other class", 0.5, 0.99,
                                  c.DOUBT_CONFIDENCE, 0.01, key="doubt_floor")
    doubts = c.label_doubts(aligned, threshold)
    images = c.image_lookup(_common.tables([ids_by_label[label] for label in kept], "gallery").values())
    every = "both" if len(kept) == 2 else f"all {len(kept)}"
    doubts_tab.markdown(f"**{len(doubts):,} test images** that {every} runs assign to the same other "
                        f"class with at least {threshold:.0%} probability: their label may be wrong (CIFAR-10's "
                        "test set has known mislabelled images). Judge them by eye.")
    image_cards(doubts_tab, doubts.head(SHOWN), aligned, images,
                extra=lambda row: f"all say **{row.agreed_class}**")
    doubts_tab.subheader("cleanlab's ranking")
    if c.cleanlab_unavailable(aligned):
        doubts_tab.info(f"No ranking: {c.cleanlab_unavailable(aligned)}.", icon=":material/info:")
        st.stop()
    issues = c.cleanlab_issues(aligned)
    issues["Also above"] = issues["index"].isin(doubts["index"])
    doubts_tab.dataframe(issues.drop(columns="position").rename(columns={
        "index": "Test image", "true_class": "Label", "likely_class": "Likely class",
        "label_quality": "Label quality"}), hide_index=True,
        column_config={"Label quality": st.column_config.NumberColumn(format="%.3f")})
    doubts_tab.caption("cleanlab (confident learning) on the runs' mean test probabilities: the images it flags "
                       "as label issues, lowest label quality (the probability given to the label) first.")
