"""Who may see the web page and post to it: the token login, the session cookie, CSRF, Host.

- With ``DICOMNODE_WEB_TOKEN`` set, every page but the login form and ``/healthz`` needs either
  ``Authorization: Bearer <token>`` (scripts) or the session cookie the login form sets (browsers).
  The cookie holds its issue time signed with the token (HMAC-SHA256): nothing is kept on the
  server, a restart keeps people logged in, and changing the token logs everyone out.
- Without a token the page is only served on a loopback address (:func:`dicomnode.config.is_loopback`
  checks the setting) and only to requests whose ``Host`` is a loopback name, so a web site that
  points its own name at 127.0.0.1 (DNS rebinding) cannot read the page from the operator's browser.
- A POST from a browser carries a CSRF token bound to its session (a hidden form field), so a page
  elsewhere cannot make the operator's browser re-send results.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

from dicomnode.config import is_loopback

#: Name of the session cookie the login form sets.
SESSION_COOKIE = "dicomnode_session"
#: How long a login lasts, in seconds (a reading-room shift).
SESSION_SECONDS = 12 * 3600


def _sign(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def host_name(host_header: str) -> str:
    """The name in a ``Host`` header, without its port (``[::1]:8088`` -> ``::1``)."""
    host = host_header.strip()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


@dataclass
class Auth:
    """The page's access rules for one token (``None``: no login, loopback only)."""

    token: str | None
    #: signs CSRF tokens; per process: a form from before a restart is refused (reload it)
    _csrf_key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    @property
    def login_required(self) -> bool:
        """Whether a token is set (every page but the login form needs it)."""
        return bool(self.token)

    def host_allowed(self, host_header: str) -> bool:
        """Without a token, only a loopback ``Host`` (see the module docstring); with one, any."""
        return self.login_required or is_loopback(host_name(host_header))

    def token_matches(self, offered: str) -> bool:
        """Whether ``offered`` is the token (constant-time compare)."""
        return bool(self.token) and hmac.compare_digest(offered.encode(), str(self.token).encode())

    def new_session(self, now: float | None = None) -> str:
        """A session cookie value: issue time and its signature."""
        assert self.token, "sessions exist only with a token"
        issued = str(int(time.time() if now is None else now))
        return f"{issued}.{_sign(self.token.encode(), 'session:' + issued)}"

    def session_valid(self, value: str | None, now: float | None = None) -> bool:
        """Whether a session cookie value was signed with the token and has not expired."""
        if not self.token or not value or "." not in value:
            return False
        issued, _, signature = value.partition(".")
        if not issued.isdigit():
            return False
        age = (time.time() if now is None else now) - int(issued)
        expected = _sign(self.token.encode(), "session:" + issued)
        return 0 <= age <= SESSION_SECONDS and hmac.compare_digest(signature, expected)

    def bearer_valid(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries the token as a bearer token."""
        if not authorization:
            return False
        scheme, _, offered = authorization.partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(offered.strip())

    def csrf_token(self, session: str | None) -> str:
        """The CSRF token of a session (of the loopback page, without one)."""
        return _sign(self._csrf_key, "csrf:" + (session or ""))[:40]

    def csrf_valid(self, session: str | None, offered: str) -> bool:
        """Whether ``offered`` is the CSRF token of ``session`` (constant-time compare)."""
        return hmac.compare_digest(offered.encode(), self.csrf_token(session).encode())


__all__ = ["SESSION_COOKIE", "SESSION_SECONDS", "Auth", "host_name"]
