"""Predict: what every selected model says about uploaded images or a random
test image, the 32x32 picture the models actually see, and each one's time."""

import numpy as np
import streamlit as st

from cifar import dashboard as d, predict
from cifar.errors import CifarError
from pages import _common, _explain

COLUMNS = {"Probability": st.column_config.ProgressColumn(format="percent", min_value=0.0, max_value=1.0,
                                                          width="small"),  # room for every column at 1440 px
           "Confidence": st.column_config.Column(help=d.CONFIDENCE_HELP),
           "Correct": st.column_config.Column(help="Whether the best guess is the image's true class"),
           "Time (ms)": st.column_config.NumberColumn(
               format="%.1f", help="One image, one forward pass on this server: the median of 5 calls on a model "
                                   "already warmed up (the first call after loading traces the model and is "
                                   "slower). The Models page's latency was measured on the training machine.")}

_common.start_page("Predict")
run_ids = _common.require_selection()
names = _common.labels()
limit_mb = st.get_option("server.maxUploadSize")

uploads = st.file_uploader(f"Upload images: JPEG, PNG, WebP, BMP or GIF, up to {limit_mb} MB each "
                           f"and {predict.MAX_UPLOAD_FILES} at once",
                           accept_multiple_files=True, key="uploads")
if st.button("Draw a random test image", icon=":material/casino:"):
    with _common.friendly_errors():
        drawn = d.pick_random_image(_common.table(run_ids[0], "gallery"), _common.table(run_ids[0], "predictions"),
                                    np.random.default_rng())
        st.session_state.random_image = drawn and {**drawn, "run": names[run_ids[0]]}

images = []  # (title, 32x32 image, true class or None, note)
decoded = predict.decode_upload([(upload.name, upload.getvalue()) for upload in uploads or []],
                                max_bytes=limit_mb * 1_000_000)
for name, image, error in decoded:
    if error:
        st.error(error, icon=":material/block:")
    else:
        images.append((name, image, None, None))
drawn = st.session_state.get("random_image")
if drawn:
    images.append((f"Random test image #{drawn['index']} (true class: {drawn['true_class']})",
                   drawn["image"], drawn["true_class"],
                   f"Drawn from the whole test set of {drawn['run']}, which got it "
                   f"{'right' if drawn['correct'] else '**wrong** (misclassified)'} in its evaluation."))
if not images:
    st.info("Upload one or more images, or draw a random test image, to see what each selected model predicts.")
    st.stop()

models = {}
with st.spinner("Loading the selected models (the first time takes a few seconds)…"):
    for run_id in run_ids:
        try:
            models[names[run_id]] = _common.model(run_id)
        except CifarError as exc:
            st.error(f"**{names[run_id]}** cannot predict: {exc}")

for title, image, true_class, note in images:
    st.subheader(title)
    if note:
        st.caption(note)
    picture, guesses = st.columns([1, 7])
    picture.image(d.enlarge(image), caption="What the models see (32×32)", width=128)
    results = {label: d.warm_prediction(model, image) for label, model in models.items()}
    if d.unlike_cifar(image):
        guesses.warning(d.unlike_cifar(image), icon=":material/help:")
    guesses.dataframe(d.prediction_rows(results, true_class), hide_index=True, column_config=COLUMNS)
    guesses.caption(f"Confidence is low when the best guess is under {d.LOW_CONFIDENCE:.0%}: the model is "
                    "unsure, often because the image is unlike CIFAR-10's ten classes. Time: one image on this "
                    "server, median of 5 calls after a warm-up.")
    _explain.heatmaps(image, [r for r in run_ids if names[r] in models], key=title)
