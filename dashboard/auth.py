"""Access to the dashboard: a token asked once per browser session before any page renders.

A token is required when ``THINKSCOPE_TOKEN`` is set in the server's environment
(``thinkscope dashboard --host ADDRESS`` sets one), and whenever the server listens beyond
the loopback interface, unless ``THINKSCOPE_NO_TOKEN=1`` says that was meant
(``thinkscope dashboard --host ADDRESS --no-token``). A server open to the network without
a token configured shows nothing but how to set one.
"""

from __future__ import annotations

import hmac
import ipaddress
from analysis import settings

TOKEN_ENV = settings.TOKEN.name
NO_TOKEN_ENV = settings.NO_TOKEN.name
_OK = "auth.ok"


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (a server.address) is reachable only from this machine; the empty
    address is Streamlit's "every interface"."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _matches(given: str, token: str) -> bool:
    return hmac.compare_digest(given.strip().encode("utf-8", "surrogatepass"), token.encode("utf-8", "surrogatepass"))


def gate() -> bool:
    """True when this session may see the pages; otherwise draws the login and returns False."""
    import streamlit as st  # here, so that the command line can read this module's names cheaply

    token = settings.TOKEN.raw()
    if not token:
        if settings.NO_TOKEN.raw() == "1" or is_loopback(st.get_option("server.address")):
            return True
        st.title("thinkscope")
        st.error(f"This dashboard listens on the network but no access token is set. Start it with "
                 f"`thinkscope dashboard --host ADDRESS` (which sets {TOKEN_ENV}), set {TOKEN_ENV} "
                 f"yourself, or pass `--no-token` to open it without one.")
        return False
    if st.session_state.get(_OK):
        return True
    given = st.query_params.get("token")
    if given is not None:
        del st.query_params["token"]  # keep the secret out of the address bar and shared links
        if _matches(given, token):
            st.session_state[_OK] = True
            return True
    st.title("thinkscope")
    with st.form("auth.form"):
        entered = st.text_input("Access token", type="password", key="auth.token",
                                help=f"The token printed when the dashboard started (or the server's {TOKEN_ENV}).")
        submitted = st.form_submit_button("Open the dashboard", type="primary")
    if submitted:
        if _matches(entered, token):
            st.session_state[_OK] = True
            st.rerun()
        st.error("That token is not right.")
    return False
