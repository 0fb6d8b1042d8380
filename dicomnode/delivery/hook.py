"""Urgent-finding notifications: an HTTP POST of each urgent analysis to the configured URLs.

With ``DICOMNODE_URGENT_HOOK_URLS`` set, the delivery round of an analysis whose priority is urgent
(:attr:`dicomnode.results.finding.Finding.priority`) first notifies each URL (:func:`notify_urgent`):
a row per URL in ``notifications`` (:mod:`dicomnode.store.notifications`), then one attempt each.
A POST that does not get a 2xx answer is retried by the node's reconciler
(:func:`send_due`, every ``DICOMNODE_RECONCILE_INTERVAL_SECONDS``, also after a restart) with the
delivery backoff (``DICOMNODE_DELIVERY_BACKOFF_SECONDS`` doubling to
``DICOMNODE_DELIVERY_BACKOFF_MAX_SECONDS``) until ``DICOMNODE_URGENT_HOOK_WINDOW_SECONDS`` after its
first attempt; then it is recorded failed with the last error. Each attempt is an event.

The body is JSON without patient name, ID or birth date (:func:`payload`); the receiver may see a
notification twice (an attempt whose answer was lost) and can tell by ``notification_id``. A URL
``mllp://host:port`` gets the same content as an HL7 v2.5 ORU^R01 instead
(:mod:`dicomnode.delivery.hl7v2`), accepted when its acknowledgement says AA or CA.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import structlog

from dicomnode.config import Settings
from dicomnode.delivery.retry import backoff_after
from dicomnode.store.db import Store
from dicomnode.store.models import NotificationState, utcnow
from dicomnode.store.notifications import (
    DueNotification,
    UrgentAnalysis,
    claim_notification,
    create_notifications,
    due_notifications,
    record_notification_attempt,
    urgent_analysis,
)
from dicomnode.store.queries import as_utc

log = structlog.get_logger("dicomnode.hook")

#: ``event`` of every body, so one receiver can tell our notifications from other hooks'
EVENT = "dicomnode.urgent_finding"
#: how the node introduces itself to the hook
USER_AGENT = "dicomnode-urgent-hook/1"
#: notifications one reconciler pass attempts at most (each may take the hook timeout)
SENDS_PER_PASS = 20


def target(url: str) -> str:
    """The URL as logs and events show it: scheme, host, port and path (no credentials or query)."""
    p = urlsplit(url)
    port = f":{p.port}" if p.port else ""
    return f"{p.scheme}://{p.hostname}{port}{p.path}"


def payload(finding: UrgentAnalysis, node_ae_title: str) -> dict[str, Any]:
    """The JSON body of an urgent-finding notification: the study's UIDs and accession number, the
    score and the model; never the patient's name, ID or birth date."""
    return {
        "event": EVENT,
        "study_instance_uid": finding.study_uid,
        "accession_number": finding.accession_number or None,
        "score": finding.score,
        "threshold": finding.threshold,
        "priority": finding.priority,
        "model_name": finding.model_name,
        "model_version": finding.model_version,
        "analysed_at": _iso(finding.analysed_at),
        "node_ae_title": node_ae_title,
        "sr_sop_instance_uid": finding.sr_sop_instance_uid,
        "sc_sop_instance_uid": finding.sc_sop_instance_uid,
    }


def _iso(value: datetime | None) -> str | None:
    value = as_utc(value)
    return None if value is None else value.isoformat().replace("+00:00", "Z")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: urllib would re-send a POST as a GET without its body."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def post(
    url: str, body: dict[str, Any], *, timeout: float, auth_header: str = ""
) -> tuple[int | None, str | None]:
    """POST ``body`` as JSON to ``url``: (HTTP status or None without an answer, error or None on 2xx)."""
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if auth_header:
        name, _, value = auth_header.partition(":")
        headers[name.strip()] = value.strip()
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with _OPENER.open(req, timeout=timeout) as rsp:
            status = int(rsp.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        hint = " (redirects are not followed: configure the final URL)" if 300 <= exc.code < 400 else ""
        return exc.code, f"HTTP {exc.code} {exc.reason}{hint}"[:300]
    except (OSError, ValueError) as exc:  # refused, unreachable, timed out, TLS, bad URL
        reason = getattr(exc, "reason", exc)
        return None, f"{type(exc).__name__}: {reason}"[:300]
    if 200 <= status < 300:
        return status, None
    return status, f"HTTP {status}"


def send(
    url: str, body: dict[str, Any], *, timeout: float, auth_header: str = ""
) -> tuple[int | None, str | None]:
    """One notification to one URL: an HL7 ORU^R01 over MLLP to ``mllp://host:port``
    (:mod:`dicomnode.delivery.hl7v2`), else the JSON POST. (HTTP status or None, error or None)."""
    if urlsplit(url).scheme == "mllp":
        from dicomnode.delivery.hl7v2 import oru_r01, send_mllp

        try:
            message = oru_r01(body, control_id=f"DN{body.get('notification_id', '')}")
        except Exception as exc:  # a value HL7 refuses: recorded like any failed attempt
            return None, f"could not build the HL7 message: {type(exc).__name__}: {exc}"[:300]
        return None, send_mllp(url, message, timeout=timeout)[1]
    return post(url, body, timeout=timeout, auth_header=auth_header)


def notify_urgent(settings: Settings, store: Store, study_uid: str, analysis_id: int) -> None:
    """Notify every hook URL of an urgent analysis (nothing for any other): create its rows, then
    one attempt each; the reconciler retries the rest. Never raises: a hook must not keep the
    results from their DICOM destinations."""
    if not settings.urgent_hook_urls:
        return
    try:
        finding = urgent_analysis(store, analysis_id)
        if finding is None:
            return
        body = payload(finding, settings.ae_title)
        if create_notifications(store, analysis_id, study_uid, settings.urgent_hook_urls, body):
            log.info("notification.created", study_uid=study_uid, urls=len(settings.urgent_hook_urls))
        send_due(settings, store, analysis_id=analysis_id)
    except Exception as exc:  # the database away: the reconciler sends what was recorded
        log.warning("notification.not_sent", study_uid=study_uid, error=f"{type(exc).__name__}: {exc}"[:300])


def send_due(
    settings: Settings,
    store: Store,
    *,
    analysis_id: int | None = None,
    now: datetime | None = None,
    limit: int = SENDS_PER_PASS,
) -> dict[NotificationState, int]:
    """Attempt the PENDING notifications that are due (of one analysis, or all), each once; how
    many ended in each state. A URL that fails is not tried again in the same call, so one hook
    that hangs costs one timeout per call, not one per notification."""
    outcome = dict.fromkeys(NotificationState, 0)
    failing: set[str] = set()
    due_before = (now or utcnow()) + timedelta(milliseconds=1)
    for n in due_notifications(store, due_before=due_before, analysis_id=analysis_id, limit=limit):
        if n.url in failing:
            continue
        state = attempt(settings, store, n)
        if state is None:
            continue
        outcome[state] += 1
        if state is not NotificationState.DELIVERED:
            failing.add(n.url)
    return outcome


def attempt(settings: Settings, store: Store, n: DueNotification) -> NotificationState | None:
    """One attempt of a due notification, recorded; None when another caller took it first."""
    lease = utcnow() + timedelta(
        seconds=settings.urgent_hook_timeout_seconds + settings.reconcile_after_seconds
    )
    if not claim_notification(store, n, lease_until=lease):
        return None
    started = utcnow()
    status, error = send(
        n.url,
        {**n.payload, "notification_id": n.id},
        timeout=settings.urgent_hook_timeout_seconds,
        auth_header=settings.urgent_hook_auth_header,
    )
    number = n.attempts + 1
    next_at = None
    if error is not None:
        first = as_utc(n.first_attempt_at) or started
        wait = backoff_after(number, settings.delivery_backoff_seconds, settings.delivery_backoff_max_seconds)
        candidate = utcnow() + timedelta(seconds=wait)
        if candidate <= first + timedelta(seconds=settings.urgent_hook_window_seconds):
            next_at = candidate
        else:
            error = (
                f"{error}; gave up after {number} attempts in DICOMNODE_URGENT_HOOK_WINDOW_SECONDS="
                f"{settings.urgent_hook_window_seconds:g}: check the receiver, the events list each attempt"
            )[:900]
    state = record_notification_attempt(
        store,
        n,
        attempted_at=started,
        http_status=status,
        error=error,
        next_attempt_at=next_at,
        target=target(n.url),
    )
    fields = {"study_uid": n.study_uid, "target": target(n.url), "attempt": number, "http_status": status}
    if state is NotificationState.DELIVERED:
        log.info("notification.delivered", **fields)
    elif state is NotificationState.PENDING:
        log.warning(
            "notification.retry",
            error=error,
            in_seconds=round((next_at - utcnow()).total_seconds(), 1) if next_at else None,
            **fields,
        )
    else:
        log.error("notification.failed", error=error, **fields)
    return state


__all__ = [
    "EVENT",
    "SENDS_PER_PASS",
    "attempt",
    "notify_urgent",
    "payload",
    "post",
    "send",
    "send_due",
    "target",
]
