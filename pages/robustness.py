"""Robustness: how each selected run holds up on damaged images (the 15
CIFAR-10-C corruptions at 5 severities), with intervals, the paper's mCE
against cnn_baseline, and what each corruption looks like."""

import numpy as np
import plotly.express as px
import streamlit as st

from cifar import dashboard as d, robustness as r
from cifar.errors import CifarError
from pages import _common

PERCENT = st.column_config.NumberColumn(format="percent")


@st.cache_data(show_spinner=False, max_entries=32)
def corruption_examples(png: bytes) -> dict[str, list[np.ndarray]] | None:
    """Each corruption at its 5 severities, enlarged; None for a damaged picture."""
    picture = d.stored_picture(png)
    if picture is None:
        return None
    return {name: [d.enlarge(image, 2) for image in images] for name, images in r.examples(picture).items()}


_common.start_page("Robustness")
run_ids = _common.require_selection()
names = _common.labels()
tables, missing = {}, []
for run_id in run_ids:
    try:
        found = _common.optional_table(run_id, r.TABLE)
    except CifarError as exc:  # there, but damaged: say why, not "not evaluated yet"
        st.warning(f"**{names[run_id]}** is left out here: {exc}", icon=":material/warning:")
        continue
    if found is None:
        missing.append(run_id)
    else:
        tables[names[run_id]] = found
if missing:
    st.info("No robustness evaluation yet for " + ", ".join(f"**{names[m]}**" for m in missing)
            + ". Compute it (1,000 test images by default; minutes per model on an idle CPU) with:",
            icon=":material/info:")
    st.code("\n".join(f"python -m cifar evaluate {m} --robustness --data /path/to/cifar10" for m in missing),
            language="bash")

if tables:
    models = {names[run_id]: _common.metadata(run_id).get("model", "") for run_id in run_ids}
    reference = r.pick_reference(models, tables)
    if not r.comparable(tables):
        st.warning("These runs were evaluated on different image subsets (size, seed or data copy); "
                   "compare them with care.", icon=":material/warning:")
    st.subheader("Summary")
    summary = r.summary(tables, reference)
    st.dataframe(summary, hide_index=True, column_config={  # short labels: all nine columns fit at 1440 px
        "Run": st.column_config.TextColumn(width="medium"),
        "Clean accuracy": st.column_config.NumberColumn("Clean", format="percent"),
        "Clean 95% interval": st.column_config.TextColumn("Clean 95% CI"),
        "Mean corruption accuracy": st.column_config.NumberColumn(
            "Corrupted", format="percent", help="Mean accuracy over the 15 corruptions at 5 severities"),
        "Mean 95% interval": st.column_config.TextColumn("Corrupted 95% CI"),
        "Relative drop": st.column_config.NumberColumn("Drop", format="percent",
                                                       help="(clean - corrupted) / clean"),
        "mCE": st.column_config.NumberColumn(format="percent", help="Mean corruption error, each corruption's "
                                             "error relative to the reference run's (100% = as robust)"),
        "Relative mCE": st.column_config.NumberColumn(format="percent", help="The same with each error minus the "
                                                      "run's clean error: the extra error the corruptions cause")})
    st.caption(f"Mean corruption accuracy averages the 15 corruptions at 5 severities. mCE and relative mCE follow "
               f"Hendrycks and Dietterich (2019) with **{reference or r.REFERENCE_MODEL}** as the reference model "
               "(the paper's AlexNet); lower is better." if reference else
               f"Select a **{r.REFERENCE_MODEL}** run with a robustness evaluation to see mCE, the paper's mean "
               "corruption error relative to a reference model.")

    st.subheader("Accuracy against severity")
    curves = r.curves(tables)
    chart = px.line(curves, x="Severity", y="Accuracy", color="Run", facet_col="Corruption", facet_col_wrap=5,
                    error_y="Above", error_y_minus="Below", markers=True, height=760,
                    facet_row_spacing=0.07, category_orders={"Corruption": list(dict.fromkeys(curves.Corruption))})
    chart.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    chart.update_yaxes(tickformat=".0%", range=[0, 1])
    chart.update_layout(legend={"orientation": "h", "y": -0.08})
    st.plotly_chart(chart, width="stretch")
    st.caption("Severity 0 is the clean images. Bars: 95% Wilson intervals (each point is one subset of test "
               "images, so small differences between runs are within the noise). " + r.STAND_IN_NOTE)
    with st.expander("Every accuracy with its interval"):
        st.dataframe(curves.drop(columns=["Above", "Below"]), hide_index=True,
                     column_config={"Accuracy": PERCENT, "Low": PERCENT, "High": PERCENT})

st.subheader("What the corruptions look like")
gallery = next(iter(_common.tables(run_ids[:1], "gallery").values()), None)
if gallery is None or gallery.empty:
    st.info("The first selected run keeps no test images to show.")
    st.stop()
position = st.slider("Test image", 0, len(gallery) - 1, 0, key="robustness_image",
                     help="One of the test images the first selected run keeps") if len(gallery) > 1 else 0
examples = corruption_examples(bytes(gallery.png.iloc[position]))
if examples is None:
    st.warning(f"Test image {position} of the first selected run is damaged (its stored picture is not an image); "
               "choose another.", icon=":material/broken_image:")
    st.stop()
for name, images in examples.items():
    st.image(images, caption=[f"{name} · {s}" for s in range(1, len(images) + 1)], width=96)
