"""TimeSformer Lab: `streamlit run app/main.py` (or `make app`, `tslab app`) from the repository root.

The entry point: page navigation over the scripts in the top-level `pages/` folder, and the sidebar
(`app/sidebar.py`) that picks the model and the clip every page works on.
"""

import streamlit as st

from app import sidebar, widgets

st.set_page_config(page_title="TimeSformer Lab", page_icon=":material/movie:", layout="wide")
widgets.keep_widget_state()

PAGES = {
    "explore": st.Page("../pages/explore.py", title="Explore", icon=":material/search:", default=True),
    "schemes": st.Page("../pages/schemes.py", title="Schemes", icon=":material/grid_view:", url_path="schemes"),
    "attribution": st.Page("../pages/attribution.py", title="Rollout & attribution", icon=":material/target:",
                           url_path="attribution"),
    "cost": st.Page("../pages/cost.py", title="Cost", icon=":material/monitoring:", url_path="cost"),
    "training": st.Page("../pages/training.py", title="Training runs", icon=":material/model_training:",
                        url_path="training"),
}
st.session_state["_pages"] = PAGES
page = st.navigation(list(PAGES.values()))
st.session_state["_ctx"] = sidebar.build_context()
page.run()
