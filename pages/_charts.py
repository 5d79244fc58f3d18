"""Plotly figures for the pages: drawing only, the data comes shaped from
`cifar.dashboard`. Each run keeps one colour on every chart."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from cifar import dashboard

PALETTE = qualitative.Safe + qualitative.Vivid
STUDY_COLOUR = "#7f7f7f"
# No plotly template: Streamlit's own chart theme styles every figure, and
# naming a template costs a deep copy of it per figure.
_LAYOUT = dict(margin=dict(l=10, r=10, t=50, b=10),
               legend=dict(orientation="h", yanchor="top", y=-0.2, x=0))


def run_colours(run_labels) -> dict[str, str]:
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(run_labels)}


def _rgba(hex_colour: str, alpha: float) -> str:
    if hex_colour.startswith("rgb("):
        return hex_colour.replace("rgb(", "rgba(").replace(")", f", {alpha})")
    h = hex_colour.lstrip("#")
    return f"rgba({int(h[0:2], 16)}, {int(h[2:4], 16)}, {int(h[4:6], 16)}, {alpha})"


def frontier(measured: pd.DataFrame, cost: str, title: str, study: pd.DataFrame | None = None,
             log_x: bool = True) -> go.Figure:
    """Accuracy against a cost; the dashed line joins the full runs nothing beats."""
    fig = go.Figure()
    hover = "%{text}<br>accuracy %{y:.1%}<br>" + cost + " %{x:,.4g}<extra></extra>"
    points = measured.dropna(subset=[cost, dashboard.ACCURACY])
    study = study.dropna(subset=[cost]) if study is not None else points.iloc[:0]
    costs = pd.concat([points[cost], study[cost]])
    colours = run_colours(sorted(points[dashboard.MODEL].unique()))
    for model, group in points.groupby(dashboard.MODEL):
        fig.add_trace(go.Scatter(x=group[cost], y=group[dashboard.ACCURACY], mode="markers+text", name=model,
                                 text=group[dashboard.RUN], texttemplate=[dashboard.point_label(r)
                                                                          for r in group[dashboard.RUN]],
                                 textposition=_label_sides(group[cost], costs),
                                 textfont=dict(size=11), hovertemplate=hover,
                                 cliponaxis=False,
                                 marker=dict(size=11, color=colours[model], line=dict(width=1, color="white"))))
    full = points[~points["partial"].fillna(False).astype(bool)] if "partial" in points else points
    best = dashboard.pareto_frontier(full, cost)  # a run that trained less is trivially cheaper
    if len(best) > 1:
        fig.add_trace(go.Scatter(x=best[cost], y=best[dashboard.ACCURACY], mode="lines", name="Best trade-off",
                                 line=dict(color="#444", dash="dash", width=1.5), hoverinfo="skip"))
    if not study.empty:
        fig.add_trace(go.Scatter(x=study[cost], y=study[dashboard.ACCURACY], mode="markers",
                                 name="Published study (reference)", text=study[dashboard.RUN], hovertemplate=hover,
                                 marker=dict(symbol="diamond-open", size=11, color=STUDY_COLOUR, line=dict(width=2))))
    fig.update_layout(title=title, xaxis_title=cost, yaxis_title="Test accuracy", yaxis_tickformat=".0%",
                      height=420, **_LAYOUT)
    # A log axis only when the costs span more than a factor of ten; otherwise
    # it would show one or two ticks, and a plain axis reads better.
    if log_x and len(costs) and costs.min() > 0 and costs.max() / costs.min() > 10:
        ticks = _log_ticks(costs.min(), costs.max())
        fig.update_xaxes(type="log", tickvals=ticks, ticktext=[_short_number(t) for t in ticks])
    elif len(costs):
        # From zero, with room on the right for the last point's label.
        fig.update_xaxes(range=[0, costs.max() * 1.25], nticks=8, tickformat="~s" if costs.max() >= 1000 else "")
    return fig


def _label_sides(xs: pd.Series, every_x: pd.Series) -> list[str]:
    """Point labels lean away from the nearer edge of the chart, so none runs
    off it or over the axis (a lone point's label is centred)."""
    low, high = every_x.min(), every_x.max()
    if low == high:
        return ["top center"] * len(xs)
    middle = (low * high) ** 0.5 if low > 0 and high / low > 10 else (low + high) / 2
    return ["top left" if x > middle else "top right" for x in xs]


def _log_ticks(low: float, high: float) -> list[float]:
    """1-2-5 ticks covering [low, high], for a log axis people can read."""
    exponents = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    ticks = [m * 10.0 ** e for e in exponents for m in (1, 2, 5)]
    return [t for t in ticks if low / 2.5 <= t <= high * 2.5]


def _short_number(value: float) -> str:
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"


_DASHES = {"Training": "dot", "Test": "dash"}


def curves(long: pd.DataFrame, best: pd.DataFrame, colours: dict[str, str], y_title: str, x_title: str,
           shade_gap: bool) -> go.Figure:
    """Validation solid, training dotted, tracked test accuracy dashed, same
    colour per run; the band between training and validation is the
    generalisation gap; a star marks the best epoch."""
    fig = go.Figure()
    for run, group in long.groupby("run", sort=False):
        colour = colours.get(run, "#333")
        train = group[group.split == "Training"]
        for split, frame in group.groupby("split", sort=False):
            fill = "tonexty" if shade_gap and split == "Validation" and not train.empty else None
            fig.add_trace(go.Scatter(  # one epoch is a point, not an invisible line
                x=frame.x, y=frame.value, mode="lines" if len(frame) > 1 else "markers",
                name=f"{run} — {split.lower()}",
                legendgroup=run, line=dict(color=colour, width=2, dash=_DASHES.get(split, "solid")),
                fill=fill, fillcolor=_rgba(colour, 0.12),
                hovertemplate=f"{run}<br>{split}: %{{y:.4g}}<extra></extra>"))
    if not best.empty:
        star_colours = [colours.get(run, "#333") for run in best.run]
        fig.add_trace(go.Scatter(x=best.x, y=best.value, mode="markers", name="Best epoch",
                                 marker=dict(symbol="star", size=15, color=star_colours,
                                             line=dict(width=1, color="black")),
                                 text=best.run, customdata=best.epoch,
                                 hovertemplate="%{text}<br>best epoch %{customdata}<extra></extra>"))
    # showlegend: plotly hides the legend of a single trace, which leaves a lone run unnamed.
    fig.update_layout(xaxis_title=x_title, yaxis_title=y_title, height=480, hovermode="closest",
                      showlegend=True, **_LAYOUT)
    if y_title == "Accuracy":
        fig.update_yaxes(tickformat=".0%")
    if y_title == "Learning rate":
        fig.update_yaxes(type="log", exponentformat="power")
    return fig


def heatmap(matrix: pd.DataFrame, title: str, normalized: bool, better: pd.DataFrame | None = None) -> go.Figure:
    """A confusion matrix; with `better` (a signed difference), cells are
    coloured blue where the change helps and red where it hurts."""
    values = matrix.to_numpy()
    text = [[dashboard.cell_text(v, normalized, signed=better is not None) for v in row] for row in values]
    if better is None:
        colour = dict(z=values, colorscale="Blues")
    else:
        limit = max(abs(better.to_numpy()).max(), 1e-9)
        colour = dict(z=better.to_numpy(), colorscale="RdBu", zmid=0, zmin=-limit, zmax=limit)
    fig = go.Figure(go.Heatmap(
        x=list(matrix.columns), y=list(matrix.index), text=text, texttemplate="%{text}",
        textfont=dict(size=11), showscale=False, xgap=1, ygap=1, **colour,
        hovertemplate="true %{y}<br>predicted %{x}<br>%{text}<extra></extra>"))
    fig.update_layout(title=dict(text=title, font=dict(size=14)), height=520,
                      margin=dict(l=10, r=10, t=50, b=10), xaxis=dict(title="Predicted class", tickangle=-45),
                      yaxis=dict(title="True class", autorange="reversed"))
    return fig


def cat_dog(table: pd.DataFrame) -> go.Figure:
    bars = [("Cats predicted as dog", "Share of cats", "#E69F00"),
            ("Dogs predicted as cat", "Share of dogs", "#56B4E9")]
    fig = go.Figure([go.Bar(name=name, y=table.Run, x=table[share], orientation="h", marker_color=colour,
                            text=table[name], texttemplate="%{text} images (%{x:.0%})", textposition="outside")
                     for name, share, colour in bars])
    fig.update_layout(barmode="group", xaxis_title="Share of that class's test images", xaxis_tickformat=".0%",
                      yaxis=dict(autorange="reversed"), height=120 + 70 * len(table), **_LAYOUT)
    fig.update_xaxes(range=[0, max(table["Share of cats"].max(), table["Share of dogs"].max(), 0.01) * 1.35])
    return fig


def per_class(table: pd.DataFrame, metric_title: str, colours: dict[str, str]) -> go.Figure:
    fig = go.Figure([go.Bar(name=run, x=table.Class, y=table[run], marker_color=colours.get(run))
                     for run in table.columns.drop("Class")])
    fig.update_layout(barmode="group", yaxis_title=metric_title, yaxis_range=[0, 1], height=380, **_LAYOUT)
    return fig
