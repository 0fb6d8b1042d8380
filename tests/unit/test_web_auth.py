"""Who may use the web page: the settings that refuse an open page, the token login (form and
bearer), the session cookie, CSRF on every POST, and the loopback Host check without a token.

Starlette's TestClient in this process against an empty SQLite store (no server, no socket).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomnode.cli import main
from dicomnode.config import ConfigError, Settings, load_settings
from dicomnode.ops.audit import AuditFilter, events
from dicomnode.store.db import Store
from dicomnode.web import app as web_app
from dicomnode.web.auth import SESSION_COOKIE, SESSION_SECONDS, Auth, host_name

with warnings.catch_warnings():  # starlette asks for httpx2 instead of httpx; both work
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

TOKEN = "correct-horse-battery-staple"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """One empty store for the module (migrating one takes a second or two)."""
    s = Store(f"sqlite:///{tmp_path_factory.mktemp('web') / 'web.sqlite3'}")
    yield s
    s.dispose()


def client(store: Store, tmp_path: Path, token: str = "", host: str = "127.0.0.1:8088") -> TestClient:
    settings = Settings(storage_dir=tmp_path / "node", web_port=8088, web_token=token)
    return TestClient(web_app.create_app(settings, store), base_url=f"http://{host}")


# ---------------------------------------------------------------------------------- settings


def test_a_page_open_beyond_loopback_needs_a_token_and_the_error_says_what_to_set() -> None:
    with pytest.raises(
        ConfigError, match=r"DICOMNODE_WEB_HOST='0.0.0.0' is not a loopback .*set DICOMNODE_WEB_TOKEN"
    ):
        load_settings(env={"DICOMNODE_WEB_PORT": "8088", "DICOMNODE_WEB_HOST": "0.0.0.0"})
    with pytest.raises(ConfigError, match="at least 16"):
        load_settings(env={"DICOMNODE_WEB_TOKEN": "short"})
    with pytest.raises(ConfigError, match="DICOMNODE_WEB_PORT=70000"):
        load_settings(env={"DICOMNODE_WEB_PORT": "70000"})
    opened = load_settings(
        env={"DICOMNODE_WEB_PORT": "8088", "DICOMNODE_WEB_HOST": "0.0.0.0", "DICOMNODE_WEB_TOKEN": TOKEN}
    )
    assert opened.web_host == "0.0.0.0" and opened.web_token == TOKEN
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert load_settings(env={"DICOMNODE_WEB_PORT": "8088", "DICOMNODE_WEB_HOST": host}).web_port == 8088
    # off (the default), any host is fine: nothing listens
    assert load_settings(env={"DICOMNODE_WEB_HOST": "0.0.0.0"}).web_port == 0
    assert TOKEN not in repr(opened)


def test_dicomnode_web_refuses_an_open_host_without_a_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("DICOMNODE_WEB_TOKEN", "DICOMNODE_WEB_HOST", "DICOMNODE_WEB_PORT", "DICOMNODE_CONFIG"):
        monkeypatch.delenv(key, raising=False)
    code = main(["web", "--host", "0.0.0.0", "--storage-dir", str(tmp_path)])
    assert code == 2
    assert "set DICOMNODE_WEB_TOKEN" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- login


def test_with_a_token_every_page_asks_for_a_login_first(store: Store, tmp_path: Path) -> None:
    c = client(store, tmp_path, TOKEN)
    for url in ("/", "/studies", "/studies/1.2.3", "/model", "/health", "/studies/1.2.3/heatmap.png"):
        r = c.get(url, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == f"/login?next={url}", url
    assert c.post("/studies/1.2.3/resend", data={}).status_code == 401
    assert c.get("/healthz").text == "ok"  # a load balancer's probe: no data, no login


def test_the_login_form_sets_a_session_and_records_every_try(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web_app, "LOGIN_FAILURE_DELAY", 0.0)
    c = client(store, tmp_path, TOKEN)
    form = c.get("/login?next=/health").text
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', form)
    assert csrf and 'name="next" value="/health"' in form
    wrong = c.post("/login", data={"csrf": csrf[1], "token": "guess", "next": "/health"})
    assert wrong.status_code == 401 and "Wrong token" in wrong.text and SESSION_COOKIE not in c.cookies
    ok = c.post("/login", data={"csrf": csrf[1], "token": TOKEN, "next": "/health"}, follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/health"
    cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and f"Max-Age={SESSION_SECONDS}" in cookie
    assert c.get("/health").status_code == 200
    kinds = [e.kind for e in events(store, AuditFilter())]
    assert kinds[:2] == ["web.login", "web.login_failed"]  # newest first
    assert TOKEN not in str([e.detail for e in events(store, AuditFilter())])
    # log out: the form's CSRF token is the session's; then the pages ask again
    page = c.get("/").text
    session_csrf = re.search(r'action="/logout".*?name="csrf" value="([0-9a-f]+)"', page, re.S)
    assert session_csrf and session_csrf[1] != csrf[1]
    assert c.post("/logout", data={"csrf": csrf[1]}).status_code == 400  # another session's token
    c.post("/logout", data={"csrf": session_csrf[1]})
    assert c.get("/", follow_redirects=False).status_code == 303
    assert events(store, AuditFilter(), kind="web.logout")


def test_a_script_may_present_the_token_as_a_bearer_header(store: Store, tmp_path: Path) -> None:
    c = client(store, tmp_path, TOKEN)
    assert c.get("/health", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    wrong = c.get("/health", headers={"Authorization": "Bearer nope-nope-nope-nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    # a bearer POST needs no CSRF token (no browser sends that header across sites)
    r = c.post("/studies/1.2.3/resend", headers={"Authorization": f"Bearer {TOKEN}"}, data={})
    assert r.status_code == 404  # past the checks: the study is unknown


def test_a_session_cookie_is_signed_and_expires() -> None:
    auth = Auth(TOKEN)
    cookie = auth.new_session(now=1_000_000)
    assert auth.session_valid(cookie, now=1_000_000 + SESSION_SECONDS - 1)
    assert not auth.session_valid(cookie, now=1_000_000 + SESSION_SECONDS + 1)
    issued, sig = cookie.split(".")
    assert not auth.session_valid(f"{int(issued) + 3600}.{sig}", now=1_000_000)  # moved issue time
    assert not Auth("another-token-of-16+").session_valid(cookie, now=1_000_000)
    assert not auth.session_valid("garbage", now=1_000_000) and not auth.session_valid(None)


def test_login_redirects_only_to_this_site(store: Store, tmp_path: Path) -> None:
    c = client(store, tmp_path, TOKEN)
    csrf = auth_csrf(c)
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        r = c.post("/login", data={"csrf": csrf, "token": TOKEN, "next": target}, follow_redirects=False)
        assert r.headers["location"] == "/", target


def auth_csrf(c: TestClient, session: str | None = None) -> str:
    return str(c.app.state.web.auth.csrf_token(session))  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------- no token


def test_without_a_token_only_a_loopback_host_header_is_served(store: Store, tmp_path: Path) -> None:
    for host in ("127.0.0.1:8088", "localhost:8088", "[::1]:8088"):
        assert client(store, tmp_path, host=host).get("/health").status_code == 200, host
    # a name pointed at 127.0.0.1 by someone else's DNS (rebinding): refused
    r = client(store, tmp_path, host="attacker.example:8088").get("/health")
    assert r.status_code == 421 and "DICOMNODE_WEB_TOKEN" in r.text
    # with a token, any name may reach the login
    assert client(store, tmp_path, TOKEN, host="node.hospital.example").get("/login").status_code == 200


def test_without_a_token_a_post_still_needs_the_pages_csrf_token(store: Store, tmp_path: Path) -> None:
    c = client(store, tmp_path)
    assert c.post("/studies/1.2.3/resend", data={}).status_code == 400
    assert c.post("/studies/1.2.3/resend", data={"csrf": auth_csrf(c)}).status_code == 404  # unknown study


def test_host_names_are_read_without_their_port() -> None:
    assert host_name("127.0.0.1:8088") == "127.0.0.1"
    assert host_name("[::1]:8088") == "::1"
    assert host_name("localhost") == "localhost"
    assert host_name("::1") == "::1"


def test_a_post_larger_than_a_form_is_refused_unread(store: Store, tmp_path: Path) -> None:
    c = client(store, tmp_path)
    r = c.post("/studies/1.2.3/resend", content=b"csrf=" + b"x" * (web_app.MAX_FORM_BYTES + 1))
    assert r.status_code == 413
