"""A real Orthanc server for tests: our own JSON config, loopback ports, REST over urllib.

Orthanc is started as a subprocess with ``TCP_NODELAY=1`` (DCMTK leaves Nagle on otherwise and each
C-STORE stalls about 40 ms) and stopped by PID.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from dicomnode.config import Destination, Settings
from tests.conftest import need_tool
from tests.support import LoggedProcess, free_port

#: Orthanc's DICOMweb plugin (Debian package orthanc-dicomweb): QIDO-RS, STOW-RS, WADO-RS under /dicom-web/
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class Orthanc:
    """One Orthanc process with its storage and index under ``workdir``."""

    def __init__(
        self,
        binary: str,
        workdir: Path,
        *,
        dicom_port: int,
        aet: str = "ORTHANC",
        modalities: dict[str, tuple[str, str, int]] | None = None,
        plugins: tuple[Path, ...] = (),
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.binary = binary
        self.plugins = plugins  # shared libraries, e.g. DICOMWEB_PLUGIN
        self.extra = extra or {}  # more top-level configuration sections, e.g. {"DicomWeb": {...}}
        self.workdir = workdir
        self.dicom_port = dicom_port
        self.http_port = free_port()
        self.aet = aet
        self.modalities = modalities or {}
        self.base_url = f"http://127.0.0.1:{self.http_port}"
        self.log_path = workdir / "orthanc.log"
        self.running: LoggedProcess | None = None

    def config(self) -> dict[str, Any]:
        """The JSON configuration Orthanc is started with."""
        return {
            "Name": "dicomnode-test",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomModalities": {name: list(peer) for name, peer in self.modalities.items()},
            "Plugins": [str(p) for p in self.plugins],
            "LuaScripts": [],
            **self.extra,
        }

    def start(self, timeout: float = 30) -> Orthanc:
        """Write the config, start Orthanc and wait until its REST API answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(self.config(), indent=1))
        env = dict(os.environ, TCP_NODELAY="1")
        self.running = LoggedProcess([self.binary, str(cfg)], env, self.log_path, cwd=self.workdir)
        self.running.wait_ready(self._rest_up, timeout, "Orthanc REST API")
        return self

    def _rest_up(self) -> bool:
        try:
            self.get("/system")
            return True
        except (urllib.error.URLError, ConnectionError):
            return False

    def stop(self) -> None:
        """Terminate the process we started (by PID) and wait for it."""
        if self.running is not None:
            self.running.stop(grace=20)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def _request(self, method: str, path: str, body: bytes | None, content_type: str) -> Any:
        req = urllib.request.Request(self.base_url + path, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, timeout=60) as rsp:
            data = rsp.read()
        return json.loads(data) if data else None

    def get(self, path: str) -> Any:
        """GET a REST resource, JSON-decoded."""
        return self._request("GET", path, None, "")

    def post(self, path: str, payload: Any) -> Any:
        """POST JSON (or a plain string for /tools/lookup), JSON-decoded answer."""
        body = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        return self._request("POST", path, body, "application/json")

    def upload(self, path: Path) -> dict[str, Any]:
        """POST one DICOM file to /instances; Orthanc's answer (ID, ParentStudy, Status)."""
        answer: dict[str, Any] = self._request("POST", "/instances", path.read_bytes(), "application/dicom")
        return answer

    def study_id(self, study_uid: str) -> str:
        """Orthanc's ID of the study with this StudyInstanceUID (via /tools/lookup)."""
        hits = [h for h in self.post("/tools/lookup", study_uid) if h["Type"] == "Study"]
        if len(hits) != 1:
            raise LookupError(f"Orthanc has {len(hits)} studies with UID {study_uid}")
        return str(hits[0]["ID"])

    def study_instances(self, orthanc_study_id: str) -> list[dict[str, Any]]:
        """Simplified tags of every instance of a study."""
        return [
            self.get(f"/instances/{i['ID']}/simplified-tags")
            for i in self.get(f"/studies/{orthanc_study_id}/instances")
        ]

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def default_orthanc(workdir: Path) -> Orthanc:
    """An Orthanc (not started) with default settings on a free DICOM port: like most PACS, it
    keeps the first copy of a SOP Instance UID (OverwriteInstances false)."""
    return Orthanc(need_tool("Orthanc"), workdir, dicom_port=free_port())


def delivering_to(orthanc: Orthanc, storage_dir: Path, **changes: Any) -> Settings:
    """Settings of a node on a free loopback port that delivers its results to ``orthanc`` (as
    ORTHANC) soon: a 0.5 s quiet period, three delivery attempts, the first retry after 0.2 s."""
    settings = Settings(
        ae_title="DICOMNODE",
        host="127.0.0.1",
        port=0,
        storage_dir=storage_dir,
        destinations=(Destination("ORTHANC", "127.0.0.1", orthanc.dicom_port),),
        quiet_seconds=0.5,
        delivery_attempts=3,
        delivery_backoff_seconds=0.2,
    )
    return settings.with_overrides(**changes) if changes else settings
