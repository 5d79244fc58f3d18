"""Grad-CAM heatmaps on the Predict page and beside the Confusion page's
mistakes (computed by cifar.explain). Heatmaps are cached per image, model
and class, so a rerun redraws them without recomputing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from cifar import CLASS_NAMES, dashboard, predict
from cifar.errors import CifarError
from pages import _common

HOW_TO_READ = ("Bright areas are the pixels that pushed the model towards the class named under each picture "
               "(Grad-CAM on the model's last convolutional layer); dark areas did not count for it.")


@st.cache_data(show_spinner=False, max_entries=512)
def _overlays(run_id: str, version: int, pixels: bytes, count: int, classes: tuple[int, ...] | None):
    """Overlays (N, 128, 128, 3) and the classes explained; classes None: each image's predicted class."""
    from cifar import explain  # imports keras: only a heatmap pays for it, not every page importing this one

    model = _common.model(run_id)
    images = np.frombuffer(pixels, dtype=np.uint8).reshape(count, 32, 32, 3)
    chosen = (predict.predict_probabilities(model, images).argmax(axis=1) if classes is None
              else np.asarray(classes))
    maps = explain.grad_cam(model, images, chosen)
    return np.stack([explain.overlay(image, heat) for image, heat in zip(images, maps)]), chosen.tolist()


def _overlay_for(run_id: str, images: np.ndarray, classes=None):
    return _overlays(run_id, _common._version(run_id), np.ascontiguousarray(images).tobytes(), len(images),
                     None if classes is None else tuple(int(c) for c in classes))


def heatmaps(image: np.ndarray, run_ids: list[str], key: str) -> None:
    """Under a predicted image: each model's heatmap for its predicted class and,
    when the user picks one, for another class."""
    names = _common.labels()
    with st.expander("Where each model looked (heatmaps)", expanded=True, icon=":material/visibility:"):
        picked = st.selectbox("Also explain the class", [None, *CLASS_NAMES], key=f"explain_{key}",
                              format_func=lambda c: "No other class" if c is None else c,
                              help="Shows what in the image speaks for this class, for every model.")
        st.caption(HOW_TO_READ)
        for cell, run_id in zip(st.columns(max(len(run_ids), 1)), run_ids):
            try:
                with st.spinner("Computing the heatmap…"):
                    overlays, predicted = _overlay_for(run_id, image[None])
                    shown = [(overlays[0], f"Predicted: {CLASS_NAMES[predicted[0]]}")]
                    if picked:
                        extra, _ = _overlay_for(run_id, image[None], [CLASS_NAMES.index(picked)])
                        shown.append((extra[0], f"Class: {picked}"))
            except CifarError as exc:
                cell.caption(f"{names.get(run_id, run_id)}: no heatmap ({exc})")
                continue
            cell.markdown(f"**{names.get(run_id, run_id)}**")
            cell.image([picture for picture, _ in shown], caption=[text for _, text in shown], width=128)


def gallery_image(cell, run_id: str, images: pd.DataFrame, row) -> None:
    """One mistake of the gallery with its heatmap for the (wrong) predicted class beside it;
    the whole gallery's heatmaps are computed in one batch and cached."""
    picture = dashboard.enlarge_png(row.png, 4)
    if picture is None:
        cell.caption(f"{row.caption} · the stored picture is damaged and cannot be shown")
        return
    try:
        pixels = np.stack([predict.decode_image(png) for png in images.png])
        overlays, _ = _overlay_for(run_id, pixels)  # each image's predicted class: the mistake
        heat = overlays[images.index.get_loc(row.Index)]
    except CifarError:  # e.g. another picture of the gallery is damaged, or the model cannot be read
        cell.image(picture, caption=row.caption, width="stretch")
        return
    pair = np.concatenate([picture, np.full((128, 4, 3), 255, np.uint8), heat], axis=1)
    cell.image(pair, caption=f"{row.caption} · heatmap for the predicted class", width="stretch")
