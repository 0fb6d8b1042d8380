"""The STOW-RS service: ``POST /studies`` and ``POST /studies/{study}`` (PS3.18 10.5), a Starlette app.

Each request is checked before its body is read: the bearer token (``DICOMNODE_DICOMWEB_TOKEN``,
401), the media type (``multipart/related; type="application/dicom"``, else 415) and a declared
length over ``DICOMNODE_DICOMWEB_MAX_REQUEST_BYTES`` (413). The body is then read as it arrives
(:class:`~dicomnode.dicomweb.parts.StowBody`); every part goes through the C-STORE callback of the
node, so an instance arriving here is checked, written, recorded and tracked as one arriving by
C-STORE, with the calling AE title :data:`CALLING_AE` in its records. A body that grows past the
request limit (413), stops before its closing boundary (400), or stalls longer than
``DICOMNODE_NETWORK_TIMEOUT_SECONDS`` between two chunks (408) is answered with the error; the
part it was in is deleted, and parts completed before it stay stored (they were recorded like
C-STOREs and a re-send of them is a duplicate).
"""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from python_multipart.multipart import parse_options_header
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from dicomnode.dicomweb.parts import BodyError, StowBody
from dicomnode.dicomweb.response import MEDIA_TYPE, stow_response
from dicomnode.net import StoreCallback
from dicomnode.net.association import AssociationEndCallback, next_serial

log = structlog.get_logger("dicomnode.dicomweb")

__all__ = ["CALLING_AE", "StowConfig", "create_app"]

#: The calling AE title STOW-RS instances are recorded with (their file meta's Source AE too)
CALLING_AE = "STOW-RS"


@dataclass(frozen=True)
class StowConfig:
    """What the STOW-RS service needs of the node's settings."""

    incoming_dir: Path
    token: str = field(default="", repr=False)  # empty: none asked (loopback only, config checks)
    max_part_bytes: int = 0  # DICOMNODE_MAX_DATASET_BYTES
    max_request_bytes: int = 0  # DICOMNODE_DICOMWEB_MAX_REQUEST_BYTES
    min_free_bytes: int = 0
    early_writeback: bool = True
    chunk_timeout: float = 60.0  # seconds between two chunks of a body


def _error(code: int, message: str, **headers: str) -> Response:
    return PlainTextResponse(message + "\n", status_code=code, headers=headers or None)


def _authorised(request: Request, token: str) -> bool:
    if not token:
        return True
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode())


def create_app(
    config: StowConfig, store: StoreCallback, on_end: AssociationEndCallback | None = None
) -> Starlette:
    """The Starlette app of the STOW-RS service; ``store`` is the node's C-STORE callback.

    Each request is one sender, as an association is: its instances carry a number of their own
    and ``on_end`` hears, after the response has gone, whether the request ended normally (its
    closing boundary read, an answer sent), so the study it alone sent completes after the release
    grace instead of the quiet period."""

    async def studies(request: Request) -> Response:
        serial = next_serial()
        response = await _studies(request, serial)
        if on_end is not None:
            response.background = BackgroundTask(on_end, serial, getattr(request.state, "stow_ended", False))
        return response

    async def _studies(request: Request, serial: int) -> Response:
        study_uid = request.path_params.get("study")
        bound = log.bind(client=request.client.host if request.client else "", study_uid=study_uid)
        if not _authorised(request, config.token):
            bound.warning("stow.refused", reason="missing or wrong bearer token", http_status=401)
            return _error(
                401,
                "present DICOMNODE_DICOMWEB_TOKEN as 'Authorization: Bearer <token>'",
                **{"WWW-Authenticate": 'Bearer realm="dicomnode"'},
            )
        kind, params = parse_options_header(request.headers.get("content-type", ""))
        if kind.lower() != b"multipart/related" or params.get(b"type", b"").lower() != b"application/dicom":
            bound.warning("stow.refused", reason="media type", http_status=415)
            return _error(
                415,
                'send Content-Type: multipart/related; type="application/dicom"; boundary=... '
                "(PS3.18 10.5.1.2); other media types are not stored",
            )
        boundary = params.get(b"boundary", b"")
        if not boundary:
            return _error(400, "the multipart/related Content-Type needs a boundary parameter")
        declared = request.headers.get("content-length", "")
        if config.max_request_bytes and declared.isdigit() and int(declared) > config.max_request_bytes:
            bound.warning("stow.refused", reason="request too large", bytes=int(declared), http_status=413)
            return _too_large(config)
        body = StowBody(
            boundary,
            config.incoming_dir,
            store,
            calling_ae=CALLING_AE,
            max_part_bytes=config.max_part_bytes,
            min_free_bytes=config.min_free_bytes,
            early_writeback=config.early_writeback,
            study_uid=study_uid,
            association=serial,
        )
        received = 0
        chunks = request.stream().__aiter__()
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(chunks.__anext__(), config.chunk_timeout)
                except StopAsyncIteration:
                    break
                received += len(chunk)
                if config.max_request_bytes and received > config.max_request_bytes:
                    body.discard()
                    bound.warning(
                        "stow.refused",
                        reason="request too large",
                        bytes=received,
                        stored=_stored(body),
                        http_status=413,
                    )
                    return _too_large(config)
                if chunk:
                    await run_in_threadpool(body.feed, chunk)
            await run_in_threadpool(body.finish)
        except BodyError as exc:
            bound.warning("stow.refused", reason=str(exc), stored=_stored(body), http_status=exc.http_status)
            return _error(exc.http_status, str(exc))
        except TimeoutError:
            body.discard()
            bound.warning("stow.refused", reason="body stalled", stored=_stored(body), http_status=408)
            return _error(408, f"no data for {config.chunk_timeout:g} s: send the request again")
        except ClientDisconnect:
            body.discard()
            bound.warning("stow.client_gone", stored=_stored(body))
            return Response(status_code=400)
        except BaseException:
            body.discard()
            raise
        if not body.outcomes:
            return _error(400, "the request holds no parts: send one application/dicom part per instance")
        code, payload = stow_response(body.outcomes)
        for outcome in body.outcomes:
            if outcome.status:
                bound.warning(
                    "stow.instance_refused",
                    sop_instance_uid=outcome.sop_instance_uid[:64],
                    failure_reason=outcome.status,
                    reason=outcome.reason,
                )
        request.state.stow_ended = body.complete
        bound.info(
            "stow.done", parts=len(body.outcomes), stored=_stored(body), bytes=received, http_status=code
        )
        return JSONResponse(payload, status_code=code, media_type=MEDIA_TYPE)

    return Starlette(
        routes=[
            Route("/studies", studies, methods=["POST"]),
            Route("/studies/{study}", studies, methods=["POST"]),
        ]
    )


def _stored(body: StowBody) -> int:
    return sum(1 for o in body.outcomes if o.status == 0)


def _too_large(config: StowConfig) -> Response:
    return _error(
        413,
        f"the request is larger than DICOMNODE_DICOMWEB_MAX_REQUEST_BYTES ({config.max_request_bytes} bytes): "
        "send the study in several requests",
    )
