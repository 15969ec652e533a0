"""Autoencoder lab: reconstruct and denoise MNIST and Fashion-MNIST test images, train in the background.

Start with `streamlit run streamlit_app.py`. The page itself lives in lab_dashboard.py. This script
sets up the page and calls it, and it turns an unexpected error into a message in plain words.
"""

import logging
import sys

import streamlit as st

st.set_page_config(page_title="Autoencoder lab", page_icon=":material/blur_on:", layout="wide")

if "lab_dashboard" in sys.modules:
    import lab_dashboard
else:
    # The first visit after a start imports PyTorch, which takes several seconds on a small CPU.
    with st.spinner("Starting the lab: loading PyTorch and the page code…"):
        import lab_dashboard

try:
    lab_dashboard.main()
except Exception as error:  # noqa: BLE001 - the page shows plain words instead of a traceback
    logging.getLogger("autoencoder_lab").exception("the page failed")
    st.error(f"Something went wrong while drawing the page: {type(error).__name__}: {error}. "
             "Reload the page; if it happens again, the server log has the details.")
