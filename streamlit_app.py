"""The dashboard: `streamlit run streamlit_app.py`.

This file only declares the pages; each page renders what `cifar/` computes.
The sidebar's run selection (pages/_common.py) is shared by every page and
kept in the URL. The Retrain page appears once pages/retrain.py exists.
"""

from pathlib import Path

import streamlit as st

from pages import _common

# A Material icon, not an emoji: an emoji makes Streamlit load its emoji catalogue on every cold start.
st.set_page_config(page_title="CIFAR-10 model comparison", page_icon=":material/image:", layout="wide")

pages = [
    st.Page("pages/models.py", title="Models", icon=":material/leaderboard:", default=True),
    st.Page("pages/curves.py", title="Learning curves", icon=":material/show_chart:"),
    st.Page("pages/confusion.py", title="Confusion", icon=":material/grid_on:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("pages/predict.py", title="Predict", icon=":material/image_search:"),
    st.Page("pages/run_details.py", title="Run details", icon=":material/description:"),
    st.Page("pages/robustness.py", title="Robustness", icon=":material/blur_on:"),
]
if (Path(__file__).parent / "pages" / "retrain.py").exists():
    pages.append(st.Page("pages/retrain.py", title="Retrain", icon=":material/model_training:"))

page = st.navigation(pages)
with _common.friendly_errors():
    _common.app_frame()
    page.run()
