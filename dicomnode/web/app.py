"""The web page as a Starlette app: routes, access checks, templates.

Pages (server-rendered, no JavaScript): ``/`` the worklist, ``/studies`` and ``/studies/<uid>``,
``/model``, ``/health``; ``POST /studies/<uid>/resend``; ``/studies/<uid>/heatmap.png``; the login
form; ``/healthz`` (``ok``, for a load balancer; no data). Who may see what: :mod:`dicomnode.web.auth`.
"""

from __future__ import annotations

import asyncio
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2
import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from dicomnode.config import ConfigError, Settings
from dicomnode.store.db import Store
from dicomnode.store.records import add_event
from dicomnode.web import pages
from dicomnode.web.auth import SESSION_COOKIE, SESSION_SECONDS, Auth
from dicomnode.web.names import PatientNames
from dicomnode.web.resend import ResendBusy, Resender
from dicomnode.web.thumbnails import Thumbnails

log = structlog.get_logger("dicomnode.web")

HERE = Path(__file__).resolve().parent
#: a Study Instance UID as it may appear in a path (PS3.5 9.1: digits and dots, 64 at most)
_UID_RE = re.compile(r"^[0-9][0-9.]{0,63}$")
#: largest POST body: the page's forms hold a token or two
MAX_FORM_BYTES = 16 << 10
#: seconds a wrong token waits for its answer: a guess a second at most, per connection
LOGIN_FAILURE_DELAY = 1.0
#: seconds between reloads of the worklist and health pages (``?refresh=`` changes it, 0: off)
REFRESH_SECONDS = 30
#: sent with every answer: pages hold accession numbers (and names, when on), so no caching, no
#: framing, no scripts, no referrer leaving for other sites
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'none'; "
    "frame-ancestors 'none'; form-action 'self'",
}


@dataclass
class WebContext:
    """What the routes share: settings, the store, access rules, caches, the resend thread."""

    settings: Settings
    store: Store
    auth: Auth
    resender: Resender
    thumbnails: Thumbnails = field(default_factory=Thumbnails)
    names: PatientNames | None = None
    _collector: Any = None
    _card: tuple[tuple[str, int], Any, str | None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def collector(self) -> Any:
        """One :class:`~dicomnode.ops.metrics.SqlCollector` for the health page (it keeps counts
        incrementally between scrapes)."""
        with self._lock:
            if self._collector is None:
                from dicomnode.ops.metrics import SqlCollector

                self._collector = SqlCollector(self.settings, self.store)
            return self._collector

    def card(self) -> tuple[Any, str | None]:
        """The model card of ``DICOMNODE_MODEL`` (read again when the file changes), or the error."""
        path = self.settings.model_path
        try:
            key = (str(path), path.stat().st_mtime_ns)
        except OSError as exc:
            return None, f"{path}: {exc.strerror or exc}"
        with self._lock:
            if self._card is not None and self._card[0] == key:
                return self._card[1], self._card[2]
        from dicomnode.model.session import read_card

        try:
            card, error = read_card(path), None
        except (OSError, ValueError) as exc:
            card, error = None, f"{path}: {exc}"
        with self._lock:
            self._card = (key, card, error)
        return card, error

    def close(self) -> None:
        """Stop the resend thread and close the health page's Redis connection."""
        self.resender.stop()
        if self._collector is not None:
            self._collector.close()


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )
    env.filters["when"] = lambda at: (
        "-" if at is None else at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    )
    env.filters["prob"] = lambda p: "-" if p is None else f"{p:.3f}"
    env.filters["gib"] = lambda n: "-" if n is None else f"{n / (1 << 30):.1f} GiB"
    env.filters["seconds"] = lambda s: "-" if s is None else f"{s:.1f} s"
    return Jinja2Templates(env=env)


TEMPLATES = _templates()


def _ctx(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.web
    return ctx


def _client(request: Request) -> str:
    return request.client.host if request.client else "-"


def _int_arg(request: Request, name: str, default: int, low: int, high: int) -> int:
    try:
        return int(pages.clamp(float(request.query_params.get(name, default)), low, high))
    except ValueError:
        return default


def _page(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
    ctx = _ctx(request)
    session = request.cookies.get(SESSION_COOKIE)
    context.setdefault("refresh", 0)
    context.update(
        request=request,
        login_required=ctx.auth.login_required,
        logged_in=ctx.auth.login_required and ctx.auth.session_valid(session),
        csrf=ctx.auth.csrf_token(session),
        show_names=ctx.names is not None,
        ae_title=ctx.settings.ae_title,
        now=datetime.now(timezone.utc),
    )
    return TEMPLATES.TemplateResponse(request, name, context, status_code=status_code)


class AccessMiddleware(BaseHTTPMiddleware):
    """The Host check, the login check and the security headers of every answer."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        ctx = _ctx(request)
        if not ctx.auth.host_allowed(request.headers.get("host", "")):
            return PlainTextResponse(
                "This page answers only at a loopback address (http://127.0.0.1:<port>/) while "
                "DICOMNODE_WEB_TOKEN is empty; set a token to reach it by another name.",
                status_code=421,
            )
        if request.method == "POST":
            length = request.headers.get("content-length", "")
            if not length.isdigit() or int(length) > MAX_FORM_BYTES:  # a form is a few hundred bytes
                return PlainTextResponse(f"a form of at most {MAX_FORM_BYTES} bytes, with its length", 413)
        path = request.url.path
        public = path in ("/login", "/healthz") or path.startswith("/static/")
        authorization = request.headers.get("authorization")
        request.state.bearer = ctx.auth.login_required and ctx.auth.bearer_valid(authorization)
        authed = (
            not ctx.auth.login_required
            or request.state.bearer
            or ctx.auth.session_valid(request.cookies.get(SESSION_COOKIE))
        )
        if not public and not authed:
            if request.method == "GET" and not authorization:
                return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
            return PlainTextResponse(
                "login required: the login form, or Authorization: Bearer <DICOMNODE_WEB_TOKEN>",
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response


def _csrf_ok(request: Request, form: Any) -> bool:
    if request.state.bearer:  # a script with the token: browsers never send this header cross-site
        return True
    return _ctx(request).auth.csrf_valid(request.cookies.get(SESSION_COOKIE), str(form.get("csrf", "")))


def _safe_next(target: str) -> str:
    """Only a path on this site (``/studies``), never ``//elsewhere`` or ``https://...``."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


# ------------------------------------------------------------------------------------ routes


def healthz(request: Request) -> Response:
    """``ok``: the process answers (no login, no data)."""
    return PlainTextResponse("ok")


async def login(request: Request) -> Response:
    """The login form (GET) and its check (POST): a session cookie, or the form again."""
    ctx = _ctx(request)
    nxt = _safe_next(request.query_params.get("next", "/"))
    if not ctx.auth.login_required:
        return RedirectResponse(nxt, status_code=303)
    if request.method == "GET":
        return _page(request, "login.html", next=nxt, error=None)
    form = await request.form()
    nxt = _safe_next(str(form.get("next", "/")))
    if not ctx.auth.csrf_valid(None, str(form.get("csrf", ""))):
        return _page(request, "login.html", 400, next=nxt, error="The form expired: enter the token again.")
    if not ctx.auth.token_matches(str(form.get("token", ""))):
        await run_in_threadpool(add_event, ctx.store, "web.login_failed", None, client=_client(request))
        log.warning("web.login_failed", client=_client(request))
        await asyncio.sleep(LOGIN_FAILURE_DELAY)
        return _page(request, "login.html", 401, next=nxt, error="Wrong token.")
    await run_in_threadpool(add_event, ctx.store, "web.login", None, client=_client(request))
    log.info("web.login", client=_client(request))
    response = RedirectResponse(nxt, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        ctx.auth.new_session(),
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


async def logout(request: Request) -> Response:
    """End the session (POST with its CSRF token)."""
    ctx = _ctx(request)
    form = await request.form()
    if not _csrf_ok(request, form):
        return PlainTextResponse("the form expired: reload the page and try again", status_code=400)
    await run_in_threadpool(add_event, ctx.store, "web.logout", None, client=_client(request))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


def worklist_page(request: Request) -> Response:
    """``/``: the reading order (``?max_wait=`` minutes, ``?days=``, ``?page=``, ``?refresh=``)."""
    ctx = _ctx(request)
    try:
        max_wait = pages.clamp(
            float(request.query_params.get("max_wait", pages.DEFAULT_MAX_WAIT_MINUTES)), 1, 7 * 24 * 60
        )
    except ValueError:
        max_wait = pages.DEFAULT_MAX_WAIT_MINUTES
    wl = pages.worklist(
        ctx.store,
        now=datetime.now(timezone.utc),
        max_wait_minutes=max_wait,
        days=_int_arg(request, "days", pages.WORKLIST_DAYS, 1, pages.MAX_DAYS),
        page=_int_arg(request, "page", 1, 1, 10_000),
        names=ctx.names,
    )
    return _page(
        request, "worklist.html", wl=wl, refresh=_int_arg(request, "refresh", REFRESH_SECONDS, 0, 3600)
    )


def studies_page(request: Request) -> Response:
    """``/studies``: newest first (``?state=``, ``?before=`` for the next page)."""
    ctx = _ctx(request)
    state = request.query_params.get("state") or None
    before = None
    if request.query_params.get("before"):
        try:
            before = datetime.fromisoformat(request.query_params["before"])
            before = before if before.tzinfo else before.replace(tzinfo=timezone.utc)
        except ValueError:
            return PlainTextResponse("before= takes an ISO 8601 time, e.g. 2026-01-31T08:00:00+00:00", 400)
    from dicomnode.store.models import StudyState

    if state and state not in {s.value for s in StudyState}:
        return PlainTextResponse(f"state={state!r}: use one of {', '.join(s.value for s in StudyState)}", 400)
    listing = pages.study_list(ctx.store, state=state, before=before, names=ctx.names)
    return _page(request, "studies.html", listing=listing, states=[s.value for s in StudyState])


def _uid(request: Request) -> str | None:
    uid = str(request.path_params["uid"])
    return uid if _UID_RE.match(uid) else None


def study_page(request: Request) -> Response:
    """``/studies/<uid>``: state, stages, deliveries, reasons, events, the resend button."""
    ctx = _ctx(request)
    uid = _uid(request)
    detail = pages.study_detail(ctx.store, uid, names=ctx.names) if uid else None
    if detail is None:
        return _page(request, "missing.html", 404, uid=uid or "")
    return _page(
        request,
        "study.html",
        d=detail,
        resend=request.query_params.get("resend"),
        resend_queued=ctx.resender.queued(detail.row.study_uid),
        has_destinations=bool(ctx.settings.destinations),
    )


async def resend_study(request: Request) -> Response:
    """``POST /studies/<uid>/resend``: queue ``dicomnode resend`` for the study, back to its page."""
    ctx = _ctx(request)
    uid = _uid(request)
    form = await request.form()
    if not _csrf_ok(request, form):
        return PlainTextResponse("the form expired: reload the study page and press resend again", 400)
    if uid is None:
        return PlainTextResponse("not a Study Instance UID", 404)
    detail = await run_in_threadpool(pages.study_detail, ctx.store, uid)
    if detail is None:
        return PlainTextResponse(f"study {uid} is not known to this node", 404)
    if not detail.can_resend:
        return RedirectResponse(f"/studies/{uid}?resend=nothing", status_code=303)
    try:
        queued = await run_in_threadpool(ctx.resender.request, uid, by=f"web:{_client(request)}")
    except ConfigError:
        return RedirectResponse(f"/studies/{uid}?resend=no-destination", status_code=303)
    except ResendBusy:
        return RedirectResponse(f"/studies/{uid}?resend=busy", status_code=303)
    return RedirectResponse(f"/studies/{uid}?resend={'queued' if queued else 'already'}", status_code=303)


def heatmap(request: Request) -> Response:
    """``/studies/<uid>/heatmap.png``: the SC result as a PNG (``?side=`` pixels, 32-1024)."""
    from dicomnode.delivery.rounds import result_file
    from dicomnode.store.queries import latest_analysis

    ctx = _ctx(request)
    uid = _uid(request)
    a = latest_analysis(ctx.store, uid) if uid else None
    if uid is None or a is None or not a.sc_sop_instance_uid or a.results_purged_at is not None:
        return PlainTextResponse("no heatmap for this study", 404)
    side = _int_arg(request, "side", ctx.thumbnails.side, 32, 1024)
    try:
        data = ctx.thumbnails.png(result_file(ctx.settings, uid, a.sc_sop_instance_uid), side)
    except (OSError, ValueError) as exc:
        log.warning("web.heatmap_unreadable", study_uid=uid, error=type(exc).__name__)
        return PlainTextResponse("the heatmap file is missing or unreadable", 404)
    return Response(data, media_type="image/png")


def model_page(request: Request) -> Response:
    """``/model``: card, threshold, drift and performance against reads (``?days=``)."""
    ctx = _ctx(request)
    card, error = ctx.card()
    view = pages.model_view(
        ctx.settings,
        ctx.store,
        card,
        error,
        now=datetime.now(timezone.utc),
        days=_int_arg(request, "days", pages.MODEL_DAYS, 1, pages.MAX_DAYS),
    )
    return _page(request, "model.html", m=view)


def health_page(request: Request) -> Response:
    """``/health``: destinations, queue, stranded and failed studies, disk."""
    ctx = _ctx(request)
    h = pages.health(ctx.settings, ctx.store, ctx.collector(), now=datetime.now(timezone.utc))
    return _page(request, "health.html", h=h, refresh=_int_arg(request, "refresh", REFRESH_SECONDS, 0, 3600))


def create_app(settings: Settings, store: Store, *, resender: Resender | None = None) -> Starlette:
    """The web page over ``store``; re-sends run on ``resender`` (default: a new one)."""
    ctx = WebContext(
        settings=settings,
        store=store,
        auth=Auth(settings.web_token or None),
        resender=resender or Resender(settings, store),
        names=PatientNames(store) if settings.web_show_patient_names else None,
    )
    app = Starlette(
        routes=[
            Route("/", worklist_page),
            Route("/healthz", healthz),
            Route("/login", login, methods=["GET", "POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/studies", studies_page),
            Route("/studies/{uid}", study_page),
            Route("/studies/{uid}/resend", resend_study, methods=["POST"]),
            Route("/studies/{uid}/heatmap.png", heatmap),
            Route("/model", model_page),
            Route("/health", health_page),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        middleware=[Middleware(AccessMiddleware)],
    )
    app.state.web = ctx
    return app


__all__ = ["REFRESH_SECONDS", "SECURITY_HEADERS", "WebContext", "create_app"]
