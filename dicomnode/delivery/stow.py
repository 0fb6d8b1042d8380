"""One delivery attempt over DICOMweb: the result objects to one STOW-RS service in one POST.

The STOW-RS counterpart of :mod:`dicomnode.delivery.sender` (PS3.18 10.5): a destination written
``stow+https://pacs.example.org/dicom-web`` (:func:`dicomnode.config.parse_destinations`) gets the
objects as one ``multipart/related; type="application/dicom"`` request to ``<url>/studies``, sent
by ``dicomweb-client``. The answer's Referenced SOP Sequence and Failed SOP Sequence (PS3.18
10.5.3, Table 10.5.3-3) give one :class:`~dicomnode.delivery.sender.AttemptResult` per object, so
retries, the delivery window, revisions and the ``delivery_attempts`` rows are the C-STORE path's
(:mod:`dicomnode.delivery.rounds`). ``status`` is the object's Failure or Warning Reason (the same
codes as a C-STORE status), or None when no answer came: the reconciler then counts the
destination down and :func:`reachable` (a QIDO-RS query) says when it is back.

Credentials (``DICOMNODE_STOW_TOKEN`` or ``DICOMNODE_STOW_BASIC_AUTH``) go on the HTTP session,
never in a URL, a log line or an error text. Storage commitment does not apply to STOW-RS.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import requests
import structlog
from pydicom import Dataset

from dicomnode.config import Destination, Settings
from dicomnode.delivery.sender import STORED_STATUSES, AttemptResult, Fallback

log = structlog.get_logger("dicomnode.delivery")

__all__ = ["StowAuth", "reachable", "results_from_response", "send_once"]

#: FailureReason of an object the service refused for its SOP class (PS3.18 Table 10.5.3-2 uses
#: the C-STORE codes): the object is rebuilt by the fallback (3D SR -> Enhanced SR) and posted again.
SOP_CLASS_NOT_SUPPORTED = 0x0122
#: What an HTTP error says about the object when the body lists nothing (PS3.18 10.5.3.1)
_HTTP_HINTS = {
    401: "check DICOMNODE_STOW_TOKEN / DICOMNODE_STOW_BASIC_AUTH",
    403: "the service refused our credentials for this URL",
    404: "check the destination's base URL (it should end where /studies begins, e.g. /dicom-web)",
    413: "the service's request size limit is below our results",
    415: "the service does not take multipart/related; type=application/dicom",
}
#: Largest error text kept from a response body (it goes into SQL)
_BODY_CHARS = 200


@dataclass(frozen=True)
class StowAuth:
    """The credentials sent to every STOW-RS destination; kept out of repr and logs."""

    token: str = field(default="", repr=False)
    basic: str = field(default="", repr=False)  # user:password

    @classmethod
    def from_settings(cls, settings: Settings) -> StowAuth:
        """``DICOMNODE_STOW_TOKEN`` and ``DICOMNODE_STOW_BASIC_AUTH``."""
        return cls(settings.stow_token, settings.stow_basic_auth)


class _Bearer(requests.auth.AuthBase):
    """``Authorization: Bearer`` added to the prepared request: not in any header dict a library logs."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self._token}"
        return r


def _session(dest: Destination, auth: StowAuth) -> requests.Session:
    """An HTTP session for ``dest``: its CA bundle and client certificate, our credentials."""
    session = requests.Session()
    session.trust_env = False  # no proxy or netrc credentials picked up from the environment
    session.verify = str(dest.tls_ca) if dest.tls_ca else True
    if dest.tls_cert is not None:
        session.cert = (str(dest.tls_cert), str(dest.tls_key)) if dest.tls_key else str(dest.tls_cert)
    if auth.token:
        session.auth = _Bearer(auth.token)
    elif auth.basic:
        user, _, password = auth.basic.partition(":")
        session.auth = requests.auth.HTTPBasicAuth(user, password)
    return session


def _reason(item: Dataset, keyword: str) -> int | None:
    value = item.get(keyword)
    return int(value) if value is not None and value != "" else None


def results_from_response(
    datasets: Sequence[Dataset],
    http_status: int,
    response: Dataset,
    *,
    destination: str,
    attempt: int,
) -> list[AttemptResult]:
    """One result per object from a STOW-RS answer: its HTTP status and its body (PS3.18 10.5.3).

    An object in the Referenced SOP Sequence was stored (its Warning Reason, if any, as status);
    one in the Failed SOP Sequence was not (its Failure Reason as status). An object the body does
    not list counts as stored only under 200 (every instance stored) and as failed otherwise."""
    referenced = {
        str(item.get("ReferencedSOPInstanceUID", "")): _reason(item, "WarningReason")
        for item in response.get("ReferencedSOPSequence", [])
    }
    failed = {
        str(item.get("ReferencedSOPInstanceUID", "")): _reason(item, "FailureReason")
        for item in response.get("FailedSOPSequence", [])
    }
    out = []
    for ds in datasets:
        uid = str(ds.SOPInstanceUID)
        if uid in failed:
            reason = failed[uid]
            text = f"STOW-RS failure reason 0x{reason:04X}" if reason is not None else "STOW-RS failed"
            out.append(
                AttemptResult(destination, uid, attempt, False, reason, f"{text} (HTTP {http_status})")
            )
        elif uid in referenced or http_status == 200:
            warning = referenced.get(uid)
            status = 0x0000 if warning is None or warning not in STORED_STATUSES else warning
            out.append(AttemptResult(destination, uid, attempt, True, status, None))
        else:
            out.append(
                AttemptResult(
                    destination,
                    uid,
                    attempt,
                    False,
                    None,
                    f"not listed in the STOW-RS response (HTTP {http_status})",
                )
            )
    return out


def _response_dataset(rsp: requests.Response) -> Dataset:
    """The answer's body as a data set (PS3.18 F.2 JSON); empty when it has none we can read."""
    kind = rsp.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if not rsp.content or kind not in ("application/dicom+json", "application/json"):
        return Dataset()
    try:
        body: Any = json.loads(rsp.content)
        return Dataset.from_json(body[0] if isinstance(body, list) and body else body)
    except (ValueError, TypeError, KeyError, AttributeError):
        return Dataset()


def _post(
    datasets: Sequence[Dataset], dest: Destination, auth: StowAuth, timeout: tuple[float, float]
) -> requests.Response:
    """POST ``datasets`` to ``<url>/studies``; the raw answer, whatever its status."""
    from dicomweb_client import DICOMwebClient

    answers: list[requests.Response] = []

    def keep(rsp: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        answers.append(rsp)
        return rsp

    with _session(dest, auth) as session:
        client = DICOMwebClient(
            dest.url,
            session=session,
            callback=keep,
            chunk_size=1 << 40,  # one body with a Content-Length: not every service takes chunked uploads
            timeout=timeout,
        )
        client.set_http_retry_params(retry=False)  # the delivery policy retries (dicomnode.delivery.retry)
        try:
            client.store_instances(list(datasets))
        except requests.HTTPError:  # 4xx/5xx: its body, if any, is read below
            pass
        except ValueError:  # the client could not read a 2xx body: read below too
            pass
        for rsp in answers:  # read whole, then closed: no connection outlives the attempt
            rsp.content  # noqa: B018
            rsp.close()
    if not answers:
        raise requests.ConnectionError("no HTTP answer")
    return answers[-1]


def send_once(
    datasets: Sequence[Dataset],
    dest: Destination,
    *,
    calling_ae: str = "",
    attempt: int = 1,
    fallback: Fallback | None = None,
    extra_sop_classes: Sequence[str] = (),
    connect_timeout: float = 10.0,
    deadline: float = 120.0,
    auth: StowAuth | None = None,
) -> list[AttemptResult]:
    """POST ``datasets`` to the STOW-RS destination ``dest``; one result per dataset, never raises.

    Takes :func:`dicomnode.delivery.sender.send_once`'s arguments (``calling_ae`` and
    ``extra_sop_classes`` mean nothing over HTTP); ``connect_timeout`` bounds the TCP connect and
    ``deadline`` each wait for the service. Objects refused for their SOP class are posted once more
    as ``fallback`` rebuilds them."""
    auth = auth or StowAuth()
    name = str(dest)
    try:
        rsp = _post(datasets, dest, auth, (connect_timeout, deadline))
    except requests.RequestException as exc:
        why = f"STOW-RS request failed: {type(exc).__name__}"
        if isinstance(exc, requests.exceptions.SSLError):
            why += ": check the service's certificate against ca= (and cert=/key=)"
        return [AttemptResult(name, str(ds.SOPInstanceUID), attempt, False, None, why) for ds in datasets]
    except Exception as exc:  # an object the client cannot encode: ours to fix, not the peer's
        why = f"STOW-RS request not sent: {type(exc).__name__}: {str(exc)[:_BODY_CHARS]}"
        return [AttemptResult(name, str(ds.SOPInstanceUID), attempt, False, None, why) for ds in datasets]
    body = _response_dataset(rsp)
    if rsp.status_code not in (200, 202, 409) and not (
        "FailedSOPSequence" in body or "ReferencedSOPSequence" in body
    ):
        hint = _HTTP_HINTS.get(rsp.status_code, "the service answered an error")
        why = f"HTTP {rsp.status_code} {rsp.reason}: {hint}"
        return [AttemptResult(name, str(ds.SOPInstanceUID), attempt, False, None, why) for ds in datasets]
    results = results_from_response(datasets, rsp.status_code, body, destination=name, attempt=attempt)
    if fallback is not None:
        results = _fall_back(datasets, results, dest, auth, fallback, (connect_timeout, deadline), attempt)
    return results


def _fall_back(
    datasets: Sequence[Dataset],
    results: list[AttemptResult],
    dest: Destination,
    auth: StowAuth,
    fallback: Fallback,
    timeout: tuple[float, float],
    attempt: int,
) -> list[AttemptResult]:
    """Post again, rebuilt, the objects refused for their SOP class; the results with theirs."""
    refused = {r.sop_instance_uid for r in results if r.status == SOP_CLASS_NOT_SUPPORTED}
    alternates = {}
    for ds in datasets:
        alt = fallback(ds) if str(ds.SOPInstanceUID) in refused else None
        if alt is not None:
            alternates[str(ds.SOPInstanceUID)] = alt
    if not alternates:
        return results
    log.info("delivery.fallback", destination=str(dest), objects=len(alternates))
    try:
        rsp = _post(list(alternates.values()), dest, auth, timeout)
    except Exception:
        return results
    again = results_from_response(
        list(alternates.values()),
        rsp.status_code,
        _response_dataset(rsp),
        destination=str(dest),
        attempt=attempt,
    )
    by_uid = {r.sop_instance_uid: r for r in again}
    return [by_uid.get(r.sop_instance_uid, r) for r in results]


def reachable(
    dest: Destination, *, auth: StowAuth | None = None, connect_timeout: float = 10.0, timeout: float = 10.0
) -> bool:
    """True when ``dest`` answers a QIDO-RS study query (``GET <url>/studies?limit=1``) with 200 or
    204: the STOW-RS counterpart of a C-ECHO, with the same credentials a delivery sends."""
    try:
        with _session(dest, auth or StowAuth()) as session:
            rsp = session.get(
                f"{dest.url}/studies",
                params={"limit": "1"},
                headers={"Accept": "application/dicom+json"},
                timeout=(connect_timeout, timeout),
            )
        return rsp.status_code in (200, 204)
    except requests.RequestException:
        return False
