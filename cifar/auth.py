"""Who may retrain from the dashboard. Browsing needs no rights; submitting
and cancelling a training do.

The mode comes from `.streamlit/secrets.toml` and the environment:

- "login": an `[auth]` section configures `st.login` (OIDC). Only a signed-in
  user whose email is in `[retrain] allowed_emails` may retrain (an empty or
  missing list lets no one).
- "token": otherwise, a team token from `[retrain] token` or
  $CIFAR_RETRAIN_TOKEN; the user types it in the page.
- "open": neither is configured (a laptop): anyone who can open the
  dashboard may retrain, and the page says so in a banner.

`authorize()` is what the page's submit and cancel handlers call on the
server before acting; hiding a button is only a courtesy on top of it.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass

from cifar.errors import CifarError

TOKEN_ENV = "CIFAR_RETRAIN_TOKEN"


class NotAllowed(CifarError):
    """The current user may not submit or cancel trainings."""


@dataclass(frozen=True)
class RetrainPolicy:
    mode: str                                  # "login" | "token" | "open"
    allowed_emails: frozenset[str] = frozenset()
    token: str | None = None

    def __repr__(self) -> str:  # never print the token
        return f"RetrainPolicy(mode={self.mode!r}, allowed_emails={sorted(self.allowed_emails)})"

    @property
    def needs_token(self) -> bool:
        return self.mode == "token"

    @property
    def needs_login(self) -> bool:
        return self.mode == "login"

    def banner(self) -> str | None:
        """A warning to show on the page, or None when retraining is protected as intended."""
        if self.mode == "open":
            return ("Retraining is open to anyone who can open this dashboard: no sign-in ([auth]) and no "
                    f"team token ([retrain] token or ${TOKEN_ENV}) are configured. Fine on a laptop; "
                    "configure one of them before sharing the dashboard.")
        if self.mode == "login" and not self.allowed_emails:
            return ("Sign-in is configured but [retrain] allowed_emails in .streamlit/secrets.toml is "
                    "empty, so no one can retrain.")
        return None


def policy_from(secrets: Mapping, environ: Mapping = os.environ) -> RetrainPolicy:
    """The policy that a secrets mapping (st.secrets or a dict) and the environment describe."""
    retrain = secrets.get("retrain") or {}
    if "auth" in secrets:
        emails = retrain.get("allowed_emails") or []
        if isinstance(emails, str):
            emails = emails.split(",")
        return RetrainPolicy("login", frozenset(_email(e) for e in emails if str(e).strip()))
    token = str(retrain.get("token") or environ.get(TOKEN_ENV) or "")
    if token:
        return RetrainPolicy("token", token=token)
    return RetrainPolicy("open")


def authorize(policy: RetrainPolicy, user: Mapping | None = None, token: str | None = None) -> str:
    """Raise NotAllowed unless this user (st.user as a dict) or token may retrain.

    Returns who is acting, as recorded with the job."""
    if policy.mode == "login":
        user = user or {}
        if not user.get("is_logged_in"):
            raise NotAllowed("sign in to retrain; browsing needs no sign-in")
        email = _email(user.get("email") or "")
        if user.get("email_verified") is False:
            raise NotAllowed(f"{email} is not a verified email address at the identity provider")
        if email not in policy.allowed_emails:
            raise NotAllowed(f"{email or 'this account'} is not allowed to retrain; ask the team to add it "
                             "to [retrain] allowed_emails")
        return email
    if policy.mode == "token":
        given = (token or "").encode()
        if not given or not hmac.compare_digest(given, policy.token.encode()):
            raise NotAllowed("the team token is missing or wrong; retraining needs the team's token")
        return "team token"
    return "anyone (retraining is open)"


def _email(value) -> str:
    return str(value).strip().lower()


# ---------------------------------------------------------------- Streamlit glue

def current_policy() -> RetrainPolicy:
    """The policy of the running Streamlit app (no secrets.toml is fine)."""
    import streamlit as st
    try:
        secrets = {key: st.secrets[key] for key in ("auth", "retrain") if key in st.secrets}
    except FileNotFoundError:  # no secrets.toml anywhere
        secrets = {}
    return policy_from(secrets)


def current_user() -> dict:
    """st.user as a plain dict ({} outside a signed-in session)."""
    import streamlit as st
    try:
        return dict(st.user.to_dict())
    except Exception:  # st.user needs a script run context
        return {}
