"""The one Streamlit internal the dashboard relies on, kept in one place.

Streamlit serves an app whose entry file has a `pages/` folder beside it in
its legacy multipage mode until `st.navigation` runs once. A fresh server's
first request for a deep link (`/confusion`) therefore runs that page alone,
without streamlit_app.py: no sidebar, no run selection. The only switch is
the class attribute `PagesManager.uses_pages_directory` (Streamlit 1.67,
pinned in requirements.txt); pages/_common.start_page turns it off and
reruns. tests/test_dashboard.py fails if an upgrade moves or renames it.
"""

from __future__ import annotations

import contextlib

from streamlit.runtime.pages_manager import PagesManager


def leave_legacy_pages_mode() -> None:
    """Serve every later request of this server through st.navigation."""
    PagesManager.uses_pages_directory = False


@contextlib.contextmanager
def every_request_a_later_one():
    """For AppTest, which re-detects the pages/ folder before every run, as
    a fresh server does for its first request only: inside this, each run is
    in the state a server is in for every later request."""
    first_request_init = PagesManager.__init__

    def init(self, *args, **kwargs):
        first_request_init(self, *args, **kwargs)
        leave_legacy_pages_mode()
    PagesManager.__init__ = init
    try:
        yield
    finally:
        PagesManager.__init__ = first_request_init
