"""Settings: a TOML file plus ``DICOMNODE_*`` environment overrides, validated at start.

Precedence: built-in defaults < TOML file (``--config`` or ``DICOMNODE_CONFIG``) < environment.
Every error names the key and says what a valid value looks like.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args, get_type_hints

if TYPE_CHECKING:  # imported when used: `dicomnode --help` need not load pydicom and numpy
    from dicomnode.model.selection import SelectionRules

ENV_PREFIX = "DICOMNODE_"

_AE_RE = re.compile(r"^[\x20-\x7e]{1,16}$")
_DEST_RE = re.compile(r"^(?P<ae>[^@]+)@(?P<host>[^:]+):(?P<port>\d+)$")
#: Marks a STOW-RS destination: ``stow+`` then the service's base URL (PS3.18 10.5)
STOW_PREFIX = "stow+"


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the key and the fix."""


@dataclass(frozen=True)
class Destination:
    """A peer that receives our results: a C-STORE SCP (``AE@host:port``) or, with ``url``, a
    DICOMweb STOW-RS service (``stow+https://host/dicom-web``: :mod:`dicomnode.delivery.stow`)."""

    ae_title: str
    host: str
    port: int
    #: TLS to this peer (``?tls``, or any option below: :mod:`dicomnode.delivery.tls`)
    tls: bool = False
    tls_ca: Path | None = None  # ``ca=``: PEM CA(s) the peer's certificate must chain to
    tls_cert: Path | None = None  # ``cert=``: our client certificate (PEM)
    tls_key: Path | None = None  # ``key=``: its private key (PEM)
    tls_server_name: str = ""  # ``name=``: the name the certificate must carry (default: host)
    #: STOW-RS base URL (http or https, no credentials); empty for a C-STORE peer
    url: str = ""

    @property
    def is_stow(self) -> bool:
        """Whether results go to this destination over DICOMweb STOW-RS instead of C-STORE."""
        return bool(self.url)

    def __str__(self) -> str:
        """The destination's name in logs and SQL: ``AE@host:port`` or ``stow+<url>``, TLS
        options left out."""
        if self.url:
            return STOW_PREFIX + self.url
        return f"{self.ae_title}@{self.host}:{self.port}"

    def spec(self) -> str:
        """The setting's form, TLS options included: parses back to this destination."""
        opts = [
            f"{name}={value}"
            for name, value in (
                ("ca", self.tls_ca),
                ("cert", self.tls_cert),
                ("key", self.tls_key),
                ("name", self.tls_server_name),
            )
            if value
        ]
        if self.url:  # https is TLS already; only the options go after the URL
            return f"{self}?{'&'.join(opts)}" if opts else str(self)
        return f"{self}?{'&'.join(opts or ['tls'])}" if self.tls else str(self)


@dataclass(frozen=True)
class Settings:
    """All node and worker settings. Build with :func:`load_settings`."""

    ae_title: str = "DICOMNODE"
    host: str = "0.0.0.0"
    port: int = 11112
    storage_dir: Path = Path("dicomnode-data")
    database_url: str = ""  # empty: SQLite file under storage_dir
    broker_url: str = ""  # empty: in-process execution
    queue: str = "gpu"  # Celery queue the inference tasks go to (run GPU workers on it)
    task_time_limit: float = 600.0  # seconds; a task past it is killed and retried
    visibility_timeout: float = 3600.0  # seconds before Redis re-delivers an unacknowledged task
    destinations: tuple[Destination, ...] = ()
    quiet_seconds: float = 5.0
    #: Seconds after a sender releases its association (A-RELEASE) before the studies it alone
    #: sent are complete, without waiting out DICOMNODE_QUIET_SECONDS. An instance arriving within
    #: it, or a study sent over several associations (or an aborted one), keeps the quiet period.
    #: Default 0.2; 0 turns completion on release off (every study waits the quiet period). Raise
    #: it (e.g. 3) for senders that open one association per series or per image.
    release_grace_seconds: float = 0.2
    model: Path | None = None  # None: the bundled demo model under storage_dir
    #: Most delivery attempts per destination and analysis; 0 (the default): no count, the
    #: window below decides. Set (e.g. 8, the old default) to give up sooner.
    delivery_attempts: int = 0
    delivery_backoff_seconds: float = 2.0  # first retry delay; doubles each attempt
    delivery_backoff_max_seconds: float = 300.0  # cap on one delay between attempts
    #: How long a destination that does not take the results is retried, from the first attempt,
    #: in seconds, before the study is DELIVERY_FAILED. Default 24 h (86400); e.g. 3600.
    delivery_window_seconds: float = 86400.0
    #: TCP connect timeout of one delivery association (a host that drops SYNs costs this).
    delivery_connect_timeout_seconds: float = 10.0
    #: Overall deadline of one delivery attempt (connect, negotiate, every C-STORE, release): the
    #: association is aborted when it passes. Default 120 s; raise it for slow links and big results.
    delivery_attempt_timeout_seconds: float = 120.0
    #: Seconds a delivery association stays open, idle, for the next study to the same destination
    #: (one per destination in each process; :mod:`dicomnode.delivery.pool`), then released.
    #: Default 5; 0: a fresh association per round. Keep it below the destination's own idle
    #: timeout (e.g. Orthanc's DicomScpTimeout, 30 s); e.g. 2.
    delivery_idle_release_seconds: float = 5.0
    #: Ask each destination to commit to the delivered results (Storage Commitment Push Model,
    #: PS3.4 J.3) and count an object as delivered only once it committed. Off by default: many
    #: PACS do not offer the class, and one that does must list this node in its modalities.
    storage_commitment: bool = False
    #: Seconds to wait for a destination's commitment report; past it the commitment failed and the
    #: objects are delivered again (within the delivery window).
    storage_commitment_timeout_seconds: float = 300.0
    #: Threads that deliver results in embedded mode, apart from the analysis thread.
    delivery_threads: int = 2
    #: Celery queue of the delivery tasks; empty: the analysis queue (``DICOMNODE_QUEUE``).
    delivery_queue: str = ""
    #: How often the node's reconciler looks for stranded studies and down destinations (0: off).
    reconcile_interval_seconds: float = 10.0
    #: A study handed on (complete, analysing) or a delivery round due this long ago without
    #: progress is handed on again by the reconciler, exactly once per period. Default 120 s.
    reconcile_after_seconds: float = 120.0
    #: A study whose analysis was started this many times without finishing (its worker killed
    #: each time) is marked failed instead of being analysed again; 0: no limit.
    max_analysis_attempts: int = 3
    #: Longest a study's hand-off to the broker may take (connection and publish retries), in
    #: seconds; a study that could not be published stays COMPLETE for the reconciler.
    publish_timeout_seconds: float = 5.0
    select_modalities: tuple[str, ...] = ("CR", "DX")
    select_body_parts: tuple[str, ...] = ("CHEST", "THORAX", "LUNG", "")
    select_views: tuple[str, ...] = ("PA", "AP", "")
    #: Also read grey Secondary Capture images (converted or digitised radiographs, such as the NIH
    #: ChestX-ray14 and RSNA challenge DICOMs) whose Modality, body part and view pass the rules
    #: above. Default false: a hospital's modalities send CR/DX, and a capture's pixels went through
    #: software the model card does not describe (dicomnode/model/selection.py). E.g. true.
    select_secondary_capture: bool = False
    #: Largest image the analysis decodes, in pixels: Rows x Columns x SamplesPerPixel x
    #: NumberOfFrames as the header states them, checked before any decoding. A larger instance is
    #: not analysed (the reason is recorded with the analysis). Default 50000000 (50 megapixels; a
    #: 43 x 43 cm detector at 0.1 mm is 18.5); 0: no limit.
    max_image_pixels: int = 50_000_000
    #: Memory, in bytes, one decode may take: the worker decodes and preprocesses each image in a
    #: child process whose address space is capped at its idle size plus this, so an image that
    #: needs more fails alone, with a reason naming this setting, and the worker goes on. Decoding
    #: takes about 25 bytes per pixel. Default 2 GiB (2147483648); 0: decode in the worker's own
    #: process, without a cap (for debugging only).
    decode_memory_bytes: int = 2 << 30
    #: A decode still running after this many seconds is stopped (its process killed) and the
    #: instance not analysed. Default 120.
    decode_timeout_seconds: float = 120.0
    # --- inference (dicomnode/model/session.py, worker/batch.py; docs/sizing.md#gpu-workers) ---
    #: Most AUROC an INT8 copy of the model may lose, by its card, and still be used: a CPU
    #: worker given ``<model>-int8.onnx`` beside ``DICOMNODE_MODEL`` times both at load and
    #: uses INT8 only where it is faster on that CPU and its card's ``quantization.auroc_change``
    #: is at least minus this. Default 0.01; 0: only without loss; negative (e.g. -1): never INT8.
    int8_max_auroc_drop: float = 0.01
    #: Put onnxruntime's TensorRT execution provider first where the installed onnxruntime has
    #: it (engines cached under the storage folder, ``trt-cache/``). Default false; e.g. true.
    tensorrt: bool = False
    #: Most waiting studies the embedded worker analyses together, their images in one model
    #: call (results per study as one by one). Default 8; 1: one study at a time.
    batch_max_studies: int = 8
    #: How long, in milliseconds, the embedded worker waits for more studies to fill a batch once
    #: it has one. Default 0: it takes the studies already waiting and never delays one; e.g. 20.
    batch_wait_ms: float = 0.0
    log_format: str = "console"  # console | json
    log_level: str = "info"
    metrics_port: int = 9108  # Prometheus /metrics of `dicomnode serve`; 0 disables it
    metrics_host: str = "127.0.0.1"  # address /metrics listens on; 0.0.0.0 only for a remote scraper
    metrics_window_seconds: float = 3600.0  # analyses finished this long before start seed the histograms
    # --- the web worklist and status page (dicomnode.web) ---
    #: Port of the node's web page (worklist, studies, model, health); 0 (default): off. Also
    #: ``dicomnode web`` serves it on its own. E.g. 8088
    web_port: int = 0
    #: Address the web page listens on. Default 127.0.0.1; any other address needs
    #: DICOMNODE_WEB_TOKEN. E.g. 0.0.0.0 (behind a firewall or a TLS reverse proxy)
    web_host: str = "127.0.0.1"
    #: Secret that unlocks the web page (a login form, or ``Authorization: Bearer <token>``), at
    #: least 16 characters; empty (default): no login, allowed only on a loopback address. E.g.
    #: the output of ``openssl rand -hex 24``
    web_token: str = field(default="", repr=False)
    #: Show patient names on the web page (read from the stored images). Default false: the page
    #: shows accession numbers and Study UIDs only. E.g. true on a reading-room screen
    web_show_patient_names: bool = False
    # --- receiving (SCP) ---
    allowed_calling_aes: tuple[str, ...] = ()  # empty: any calling AE may associate
    tls_cert: Path | None = None  # PEM certificate chain; with tls_key the SCP speaks TLS only
    tls_key: Path | None = None
    tls_ca: Path | None = None  # PEM CA bundle: when set, peers must present a certificate it signed
    #: Client certificates tied to calling AE titles (needs DICOMNODE_TLS_CA): entries
    #: ``<certificate subject CN>:<calling AE>``, comma-separated (or a TOML list), one per AE a
    #: certificate may use, e.g. ``ct1.example.org:CT1,pacs.example.org:PACS``. When set, a peer may
    #: only associate as an AE listed for its certificate's CN; others are rejected (A-ASSOCIATE-RJ,
    #: calling AE not recognised). Empty (default): any certificate the CA signed, any calling AE.
    tls_client_aes: tuple[str, ...] = ()
    max_associations: int = 10
    max_associations_per_peer: int = 8  # connections one IP address may hold open; more are closed; 0: no cap
    #: Connections still negotiating (TCP accepted, no association yet), from all addresses together;
    #: at the cap the oldest of them is closed to make room for the new one, so a flood of silent or
    #: trickling connections cannot take every thread, and a peer that associates at once gets in.
    #: Default 64; 0: no cap.
    max_pending_connections: int = 64
    acse_timeout_seconds: float = 30.0  # association negotiation (a total for the A-ASSOCIATE-RQ) / release
    dimse_timeout_seconds: float = 60.0  # waiting for a DIMSE message inside an association
    network_timeout_seconds: float = 60.0  # no complete DIMSE message this long: the association is aborted
    max_pdu_bytes: int = 1 << 20  # largest PDU we accept (0: unlimited, a whole image may arrive in one)
    duplicate_policy: str = "overwrite"  # overwrite | ignore: a SOP Instance UID already stored
    #: Largest data set one C-STORE may send, in bytes (0: no limit). A larger one is refused with
    #: 0xA700 as soon as it passes the limit, the rest drained and nothing kept, so one sender cannot
    #: fill the disk. Default 2 GiB; e.g. 536870912 where only radiographs arrive.
    max_dataset_bytes: int = 2 << 30
    #: Free space, in bytes, the storage disk keeps: below it every new C-STORE is refused with
    #: 0xA700 before its data set is written (0: off). Default 1 GiB; e.g. 10737418240 (10 GiB).
    min_free_bytes: int = 1 << 30
    #: Largest size, in bytes, a deflated data set (Deflated Explicit VR Little Endian) may inflate
    #: to: a larger one is refused with 0xA700 when it arrives, and never inflated whole by the
    #: analysis (a deflate bomb is ~1 KiB per MiB). Default 512 MiB, room for any radiograph; 0: no limit.
    max_inflated_bytes: int = 512 << 20
    fsync: bool = True  # fsync files and folders before Success; false only for disposable nodes
    #: Share fsyncs between associations storing at once: one flush covers every file written
    #: before it, each sender answered once its file is covered. Off by default: on ext4 the
    #: journal already merges concurrent fsyncs and this measured slower (docs/sizing.md, group
    #: commit); try it on filesystems where a flush is costly for every caller (e.g. NFS). E.g. true.
    group_commit: bool = False
    shutdown_grace_seconds: float = 30.0  # SIGTERM: how long open associations may finish
    #: Retention (dicomnode.ops.purge): days after delivery a study's received instances are
    #: deleted, and days after they were built its result files are; 0 (the default): kept for
    #: ever. SQL rows stay, marked purged. E.g. 30 and 90.
    retention_instance_days: float = 0.0
    retention_result_days: float = 0.0
    #: How often ``serve`` purges what retention allows (seconds; 0: only ``dicomnode purge``).
    purge_interval_seconds: float = 3600.0
    # --- urgent-finding notifications (dicomnode.delivery.hook) ---
    #: URLs that get an HTTP POST (JSON, no patient name or ID) for every analysis whose priority
    #: is urgent (``mllp://host:port``: an HL7 v2 ORU^R01 instead), comma-separated (or a TOML
    #: list); empty (default): none. Each is retried with
    #: backoff for DICOMNODE_URGENT_HOOK_WINDOW_SECONDS. E.g. https://ris.example.org/hooks/urgent
    urgent_hook_urls: tuple[str, ...] = ()
    #: One HTTP header sent with every hook POST, ``Name: value``; empty (default): none. Keep
    #: tokens here rather than in the URL (URLs are recorded). E.g. ``Authorization: Bearer s3cret``
    urgent_hook_auth_header: str = ""
    #: Seconds one hook POST may take (connect and answer) before it counts as failed. Default 5.
    urgent_hook_timeout_seconds: float = 5.0
    #: How long, from the first attempt, a hook POST that fails is retried (by the reconciler, with
    #: the delivery backoff) before it is recorded failed. Default 3600 (1 h); e.g. 600.
    urgent_hook_window_seconds: float = 3600.0
    # --- DICOMweb (STOW-RS): dicomnode.dicomweb receives, dicomnode.delivery.stow sends ---
    #: Bearer token sent (``Authorization: Bearer``) to every ``stow+`` destination; empty
    #: (default): none. Never logged. E.g. ``eyJhbGciOi...``
    stow_token: str = field(default="", repr=False)
    #: HTTP basic auth for every ``stow+`` destination, ``user:password``; empty (default): none.
    #: Never logged. E.g. ``dicomnode:s3cret``
    stow_basic_auth: str = field(default="", repr=False)
    #: Port of the node's STOW-RS service (``POST /studies``); 0 (default): off. E.g. 8080
    dicomweb_port: int = 0
    #: Address the STOW-RS service listens on. Default 127.0.0.1; any other address needs
    #: DICOMNODE_DICOMWEB_TOKEN. E.g. 0.0.0.0
    dicomweb_host: str = "127.0.0.1"
    #: Bearer token a STOW-RS sender must present (``Authorization: Bearer <token>``); empty
    #: (default): none asked, allowed only on a loopback address. E.g. a long random string
    dicomweb_token: str = field(default="", repr=False)
    #: Largest STOW-RS request body, in bytes, all parts together (each part is also held to
    #: DICOMNODE_MAX_DATASET_BYTES); a larger one is answered 413. Default 4 GiB; 0: no limit.
    dicomweb_max_request_bytes: int = 4 << 30
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def effective_database_url(self) -> str:
        """The SQLAlchemy URL in force (SQLite under the storage folder unless configured)."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.storage_dir / 'dicomnode.sqlite3').resolve()}"

    @property
    def model_path(self) -> Path:
        """The ONNX model file in force."""
        if self.model is not None:
            return self.model
        return self.storage_dir / "models" / "pneumonia-demo.onnx"

    @property
    def selection_rules(self) -> SelectionRules:
        """The series selection rules in force."""
        from dicomnode.model.selection import SelectionRules

        return SelectionRules(
            self.select_modalities, self.select_body_parts, self.select_views, self.select_secondary_capture
        )

    @property
    def instances_dir(self) -> Path:
        return self.storage_dir / "instances"

    @property
    def results_dir(self) -> Path:
        return self.storage_dir / "results"

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some settings replaced (validated again)."""
        return _validate(replace(self, **changes))

    def to_env(self) -> dict[str, str]:
        """The ``DICOMNODE_*`` variables that give another process (a worker) these settings.

        ``load_settings(env=s.to_env())`` equals ``s`` with the database URL and model path made
        explicit. An empty code in a list is written as ``-`` (attribute missing)."""
        env = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or value is None:
                continue
            if isinstance(value, tuple):
                value = ",".join(v.spec() if isinstance(v, Destination) else (str(v) or "-") for v in value)
            elif isinstance(value, bool):
                value = "true" if value else "false"
            env[ENV_PREFIX + f.name.upper()] = str(value)
        env[ENV_PREFIX + "DATABASE_URL"] = self.effective_database_url
        env[ENV_PREFIX + "MODEL"] = str(self.model_path)
        return env


def parse_destinations(
    value: str | list[str], key: str = "DICOMNODE_DESTINATIONS"
) -> tuple[Destination, ...]:
    """Parse ``AE@host:port`` entries (comma-separated string or list), each optionally followed
    by TLS options: ``?tls``, or ``?ca=/ca.pem&cert=/me.pem&key=/me.key&name=pacs.example.org``."""
    items = value if isinstance(value, list) else [v for v in value.split(",")]
    out = []
    for raw in items:
        entry, _, query = raw.strip().partition("?")
        if not entry:
            continue
        if entry.startswith(STOW_PREFIX):
            out.append(_stow_destination(entry[len(STOW_PREFIX) :], query, key))
            continue
        m = _DEST_RE.match(entry)
        if not m:
            raise ConfigError(f"{key} entry {entry!r} must look like AE@host:port, e.g. PACS@10.0.0.5:104")
        port = int(m["port"])
        if not 0 < port < 65536:
            raise ConfigError(f"{key} entry {entry!r} has port {port}: use 1-65535")
        ae = m["ae"].strip()
        if not _AE_RE.match(ae):
            raise ConfigError(f"{key} entry {entry!r}: AE title must be 1-16 printable characters")
        out.append(_with_tls(Destination(ae, m["host"], port), query, f"{key} entry {raw.strip()!r}"))
    return tuple(out)


def _stow_destination(url: str, query: str, key: str) -> Destination:
    """A STOW-RS destination from its base URL and options (``ca=``, ``cert=``, ``key=``)."""
    from urllib.parse import urlsplit

    where = f"{key} entry {STOW_PREFIX + url + ('?' + query if query else '')!r}"
    try:
        parts = urlsplit(url)
        if parts.username or parts.password:  # the message must not repeat them
            where = f"{key} entry {STOW_PREFIX + parts.scheme}://...@{parts.hostname}..."
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}; e.g. stow+https://pacs.example.org/dicom-web") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{where}: after stow+ comes the DICOMweb base URL, http or https, "
            "e.g. stow+https://pacs.example.org/dicom-web"
        )
    if parts.username or parts.password:
        raise ConfigError(
            f"{where}: no credentials in the URL (it is logged and recorded): set DICOMNODE_STOW_BASIC_AUTH "
            "(user:password) or DICOMNODE_STOW_TOKEN instead"
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"{where}: the base URL takes no query or fragment; options follow ?, e.g. ?ca=/ca.pem")
    base = url.rstrip("/")
    if len(STOW_PREFIX + base) > 128:
        raise ConfigError(f"{where}: the URL is longer than the 123 characters SQL records for a destination")
    dest = Destination("", parts.hostname, port, tls=parts.scheme == "https", url=base)
    if "name=" in query:
        raise ConfigError(f"{where}: name= is for DICOM TLS; a STOW-RS certificate must match the URL's host")
    if not query:
        return dest
    with_options = _with_tls(dest, query, where)
    if not dest.tls:
        raise ConfigError(f"{where}: ca=, cert= and key= need an https URL")
    return with_options


def _with_tls(dest: Destination, query: str, where: str) -> Destination:
    """``dest`` with the TLS options of ``query`` (``tls``, ``ca=``, ``cert=``, ``key=``, ``name=``)."""
    if not query:
        return dest
    paths: dict[str, Path] = {}
    name = ""
    for option in query.split("&"):
        opt, eq, val = option.partition("=")
        if opt == "tls" and not eq:
            continue
        if opt in ("ca", "cert", "key") and val:
            if not Path(val).is_file():
                raise ConfigError(f"{where}: {opt}={val!r}: no such file (a PEM file is expected)")
            paths[opt] = Path(val)
        elif opt == "name" and val:
            name = val
        else:
            raise ConfigError(
                f"{where}: unknown TLS option {option!r}; use tls, ca=<PEM>, cert=<PEM>, key=<PEM>, "
                "name=<certificate name>, joined by &, e.g. PACS@pacs:2762?ca=/etc/dicomnode/pacs-ca.pem"
            )
    if ("cert" in paths) != ("key" in paths):
        raise ConfigError(f"{where}: cert= and key= go together (the node's client certificate and its key)")
    return replace(
        dest,
        tls=True,
        tls_ca=paths.get("ca"),
        tls_cert=paths.get("cert"),
        tls_key=paths.get("key"),
        tls_server_name=name,
    )


DUPLICATE_POLICIES = ("overwrite", "ignore")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("console", "json")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _parse_bool(key: str, value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in _TRUE or v in _FALSE:
        return v in _TRUE
    raise ConfigError(f"{key}={value!r} is not a boolean: use true or false")


def parse_ae_list(value: str | list[str], key: str = "DICOMNODE_ALLOWED_CALLING_AES") -> tuple[str, ...]:
    """AE titles, comma-separated (env) or a list (TOML); case is kept (AE titles are case-sensitive)."""
    items = value if isinstance(value, list) else value.split(",")
    out = []
    for raw in items:
        ae = str(raw).strip()
        if not ae:
            continue
        if not _AE_RE.match(ae):
            raise ConfigError(f"{key} entry {ae!r}: an AE title is 1-16 printable characters, e.g. MODALITY1")
        out.append(ae)
    return tuple(out)


def parse_hook_urls(value: str | list[str], key: str = "DICOMNODE_URGENT_HOOK_URLS") -> tuple[str, ...]:
    """Comma-separated (env) or list (TOML) of http(s) URLs with a host, or ``mllp://host:port``."""
    from urllib.parse import urlsplit

    items = value if isinstance(value, list) else str(value).split(",")
    urls = tuple(str(v).strip() for v in items if str(v).strip())
    for url in urls:
        parts = urlsplit(url)
        mllp = parts.scheme == "mllp" and parts.hostname and parts.port
        if not mllp and (parts.scheme not in ("http", "https") or not parts.hostname):
            raise ConfigError(
                f"{key} entry {url!r}: use an http(s) URL, e.g. https://ris.example.org/hooks/urgent, "
                "or mllp://host:port for HL7 v2"
            )
    return urls


def parse_client_aes(value: str | list[str], key: str = "DICOMNODE_TLS_CLIENT_AES") -> tuple[str, ...]:
    """``CN:AE`` entries, comma-separated (env) or a list (TOML), split at the last colon; the CN is
    kept exactly as written (it is compared with the certificate's), the AE title checked."""
    items = value if isinstance(value, list) else value.split(",")
    out = []
    for raw in items:
        entry = str(raw).strip()
        if not entry:
            continue
        cn, sep, ae = entry.rpartition(":")
        cn, ae = cn.strip(), ae.strip()
        if not sep or not cn or not _AE_RE.match(ae):
            raise ConfigError(
                f"{key} entry {entry!r} must be <certificate subject CN>:<calling AE title>, "
                "e.g. ct1.example.org:CT1"
            )
        out.append(f"{cn}:{ae}")
    return tuple(out)


def _parse_list(value: str | list[str]) -> tuple[str, ...]:
    """Comma-separated (env) or list (TOML) of codes; "-" or "(empty)" stands for a missing value."""
    items = value if isinstance(value, list) else value.split(",")
    return tuple(
        "" if v.strip() in ("-", "(empty)") else v.strip().upper()
        for v in items
        if v.strip() or isinstance(value, list)
    )


def _typed(kind: type) -> Callable[[str, Any], Any]:
    """A parser that converts with ``kind`` (str, int, float, Path) and names the key on failure."""
    name = {int: "an integer", float: "a number"}.get(kind, "a string")

    def parse(key: str, value: Any) -> Any:
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r} is not {name}") from None

    return parse


#: settings whose values need more than their type says (the others are parsed by type)
_BY_NAME: dict[str, Callable[[str, Any], Any]] = {
    "allowed_calling_aes": lambda key, v: parse_ae_list(v, key),  # AE titles: case kept, checked
    "tls_client_aes": lambda key, v: parse_client_aes(v, key),
    "duplicate_policy": lambda key, v: str(v).strip().lower(),
    "log_level": lambda key, v: str(v).strip().lower(),  # INFO and info alike
    "log_format": lambda key, v: str(v).strip().lower(),
    "urgent_hook_urls": lambda key, v: parse_hook_urls(v, key),  # URLs: case kept, checked
}
_BY_TYPE: dict[Any, Callable[[str, Any], Any]] = {
    bool: _parse_bool,
    tuple[str, ...]: lambda key, v: _parse_list(v),  # codes: upper-cased, "-" for empty
    tuple[Destination, ...]: lambda key, v: parse_destinations(v, key),
    **{kind: _typed(kind) for kind in (str, int, float, Path)},
}


def _parsers() -> dict[str, Callable[[str, Any], Any]]:
    """(key, value) -> value parser of every setting a file or the environment may set, in field
    order, from the field types (``X | None`` parses as ``X``; ``extra`` has none)."""
    hints = get_type_hints(Settings)
    out = {}
    for f in fields(Settings):
        hint = hints[f.name]
        if type(None) in get_args(hint):
            (hint,) = (a for a in get_args(hint) if a is not type(None))
        parse = _BY_NAME.get(f.name) or _BY_TYPE.get(hint)
        if parse is not None:
            out[f.name] = parse
    return out


_PARSERS = _parsers()


def _cast(key: str, name: str, value: Any) -> Any:
    return _PARSERS[name](key, value)


def _require_positive_seconds(*settings: tuple[str, float]) -> None:
    """Each (key without DICOMNODE_, value) must be a duration > 0 seconds (NaN is refused too)."""
    for key, v in settings:
        if not v > 0:
            raise ConfigError(f"DICOMNODE_{key}={v}: must be > 0 seconds")


def _validate(s: Settings) -> Settings:
    if not _AE_RE.match(s.ae_title) or s.ae_title.strip() != s.ae_title:
        raise ConfigError(
            f"DICOMNODE_AE_TITLE={s.ae_title!r}: use 1-16 printable characters, no spaces at the ends"
        )
    if not 0 <= s.port < 65536:
        raise ConfigError(f"DICOMNODE_PORT={s.port}: use 0-65535 (0 picks a free port)")
    if s.quiet_seconds < 0:
        raise ConfigError(f"DICOMNODE_QUIET_SECONDS={s.quiet_seconds}: must be >= 0")
    if not s.release_grace_seconds >= 0:
        raise ConfigError(
            f"DICOMNODE_RELEASE_GRACE_SECONDS={s.release_grace_seconds}: use seconds >= 0, e.g. 0.2, "
            "or 0 to wait out the quiet period after every association"
        )
    if s.task_time_limit <= 0 or s.visibility_timeout <= 0:
        raise ConfigError("DICOMNODE_TASK_TIME_LIMIT and DICOMNODE_VISIBILITY_TIMEOUT must be > 0")
    if s.delivery_attempts < 0:
        raise ConfigError(
            f"DICOMNODE_DELIVERY_ATTEMPTS={s.delivery_attempts}: use 0 (retry for "
            "DICOMNODE_DELIVERY_WINDOW_SECONDS) or a number of attempts >= 1"
        )
    _require_positive_seconds(
        ("DELIVERY_WINDOW_SECONDS", s.delivery_window_seconds),
        ("DELIVERY_CONNECT_TIMEOUT_SECONDS", s.delivery_connect_timeout_seconds),
        ("DELIVERY_ATTEMPT_TIMEOUT_SECONDS", s.delivery_attempt_timeout_seconds),
        ("RECONCILE_AFTER_SECONDS", s.reconcile_after_seconds),
        ("PUBLISH_TIMEOUT_SECONDS", s.publish_timeout_seconds),
        ("STORAGE_COMMITMENT_TIMEOUT_SECONDS", s.storage_commitment_timeout_seconds),
        ("URGENT_HOOK_TIMEOUT_SECONDS", s.urgent_hook_timeout_seconds),
        ("URGENT_HOOK_WINDOW_SECONDS", s.urgent_hook_window_seconds),
    )
    if s.urgent_hook_auth_header and ":" not in s.urgent_hook_auth_header.strip(":"):
        raise ConfigError(
            "DICOMNODE_URGENT_HOOK_AUTH_HEADER: use one header as 'Name: value', e.g. 'Authorization: Bearer s3cret'"
        )
    if not s.delivery_idle_release_seconds >= 0:
        raise ConfigError(
            f"DICOMNODE_DELIVERY_IDLE_RELEASE_SECONDS={s.delivery_idle_release_seconds}: use seconds >= 0, "
            "e.g. 5, or 0 for a fresh association per delivery round"
        )
    if s.reconcile_interval_seconds < 0:
        raise ConfigError(
            f"DICOMNODE_RECONCILE_INTERVAL_SECONDS={s.reconcile_interval_seconds}: use seconds > 0, or 0 to turn it off"
        )
    if s.delivery_threads < 1:
        raise ConfigError(f"DICOMNODE_DELIVERY_THREADS={s.delivery_threads}: must be >= 1")
    if s.max_analysis_attempts < 0:
        raise ConfigError(
            f"DICOMNODE_MAX_ANALYSIS_ATTEMPTS={s.max_analysis_attempts}: use 0 (no limit) or a number >= 1, e.g. 3"
        )
    if s.broker_url and not s.broker_url.startswith(("redis://", "rediss://", "amqp://", "memory://")):
        raise ConfigError(
            f"DICOMNODE_BROKER_URL={s.broker_url!r}: use a Celery broker URL such as "
            "redis://127.0.0.1:6379/0, or leave it unset for in-process execution"
        )
    if not 0 <= s.metrics_port < 65536:
        raise ConfigError(f"DICOMNODE_METRICS_PORT={s.metrics_port}: use 1-65535, or 0 to turn /metrics off")
    if s.metrics_window_seconds <= 0:
        raise ConfigError(
            f"DICOMNODE_METRICS_WINDOW_SECONDS={s.metrics_window_seconds}: must be > 0, e.g. 3600"
        )
    if s.log_format not in LOG_FORMATS:
        raise ConfigError(f"DICOMNODE_LOG_FORMAT={s.log_format!r}: use one of {', '.join(LOG_FORMATS)}")
    if s.log_level not in LOG_LEVELS:
        raise ConfigError(f"DICOMNODE_LOG_LEVEL={s.log_level!r}: use one of {', '.join(LOG_LEVELS)}")
    if s.model is not None and s.model.suffix != ".onnx":
        raise ConfigError(f"DICOMNODE_MODEL={str(s.model)!r}: point it at an .onnx file")
    for key, v in (
        ("RETENTION_INSTANCE_DAYS", s.retention_instance_days),
        ("RETENTION_RESULT_DAYS", s.retention_result_days),
        ("PURGE_INTERVAL_SECONDS", s.purge_interval_seconds),
    ):
        if v < 0:
            raise ConfigError(f"DICOMNODE_{key}={v}: use a number >= 0 (0 turns it off), e.g. 30")
    _validate_decoding(s)
    _validate_receiving(s)
    _validate_dicomweb(s)
    _validate_web(s)
    return s


def _validate_dicomweb(s: Settings) -> None:
    if not 0 <= s.dicomweb_port < 65536:
        raise ConfigError(f"DICOMNODE_DICOMWEB_PORT={s.dicomweb_port}: use 1-65535, or 0 to turn STOW-RS off")
    if s.dicomweb_port and not s.dicomweb_token and s.dicomweb_host not in ("127.0.0.1", "::1", "localhost"):
        raise ConfigError(
            f"DICOMNODE_DICOMWEB_HOST={s.dicomweb_host!r} is not a loopback address: set "
            "DICOMNODE_DICOMWEB_TOKEN (senders present it as a bearer token), or listen on 127.0.0.1"
        )
    if s.dicomweb_max_request_bytes < 0:
        raise ConfigError(
            f"DICOMNODE_DICOMWEB_MAX_REQUEST_BYTES={s.dicomweb_max_request_bytes}: use bytes >= 0 "
            "(0: no limit), e.g. 4294967296"
        )
    if s.stow_basic_auth and ":" not in s.stow_basic_auth:
        raise ConfigError("DICOMNODE_STOW_BASIC_AUTH: use user:password, e.g. dicomnode:s3cret")
    if s.stow_basic_auth and s.stow_token:
        raise ConfigError("DICOMNODE_STOW_BASIC_AUTH and DICOMNODE_STOW_TOKEN: set one of them, not both")


#: Shortest DICOMNODE_WEB_TOKEN: a guessable secret would leave the page open to anyone.
WEB_TOKEN_MIN_LENGTH = 16


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable only from this machine."""
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name other than localhost may resolve anywhere
        return False


def _validate_web(s: Settings) -> None:
    if not 0 <= s.web_port < 65536:
        raise ConfigError(f"DICOMNODE_WEB_PORT={s.web_port}: use 1-65535, e.g. 8088, or 0 to turn the web page off")
    if s.web_token and len(s.web_token) < WEB_TOKEN_MIN_LENGTH:
        raise ConfigError(
            f"DICOMNODE_WEB_TOKEN is {len(s.web_token)} characters: use at least {WEB_TOKEN_MIN_LENGTH}, "
            "e.g. the output of `openssl rand -hex 24`"
        )
    if s.web_port and not s.web_token and not is_loopback(s.web_host):
        raise ConfigError(
            f"DICOMNODE_WEB_HOST={s.web_host!r} is not a loopback address: set DICOMNODE_WEB_TOKEN "
            "(at least 16 characters, e.g. `openssl rand -hex 24`) so the page asks for it, "
            "or keep DICOMNODE_WEB_HOST=127.0.0.1"
        )


def _validate_decoding(s: Settings) -> None:
    if s.max_image_pixels < 0:
        raise ConfigError(
            f"DICOMNODE_MAX_IMAGE_PIXELS={s.max_image_pixels}: use a number of pixels, e.g. 50000000, "
            "or 0 for no limit"
        )
    if s.decode_memory_bytes != 0 and s.decode_memory_bytes < 64 << 20:
        raise ConfigError(
            f"DICOMNODE_DECODE_MEMORY_BYTES={s.decode_memory_bytes}: use bytes, at least 67108864 "
            "(64 MiB), e.g. 2147483648 (2 GiB), or 0 to decode in the worker's own process"
        )
    if not s.decode_timeout_seconds > 0:
        raise ConfigError(f"DICOMNODE_DECODE_TIMEOUT_SECONDS={s.decode_timeout_seconds}: must be > 0 seconds")
    if s.batch_max_studies < 1:
        raise ConfigError(
            f"DICOMNODE_BATCH_MAX_STUDIES={s.batch_max_studies}: use 1 (one study at a time) or more, e.g. 8"
        )
    if s.int8_max_auroc_drop != s.int8_max_auroc_drop:  # NaN
        raise ConfigError(
            "DICOMNODE_INT8_MAX_AUROC_DROP=nan: use an AUROC difference, e.g. 0.01, or -1 to never use INT8"
        )
    if not 0 <= s.batch_wait_ms <= 10_000:
        raise ConfigError(
            f"DICOMNODE_BATCH_WAIT_MS={s.batch_wait_ms}: use milliseconds from 0 (no waiting) to 10000, e.g. 20"
        )


def _validate_receiving(s: Settings) -> None:
    if (s.tls_cert is None) != (s.tls_key is None):
        raise ConfigError(
            "DICOMNODE_TLS_CERT and DICOMNODE_TLS_KEY go together: set both (PEM files) for TLS, or neither"
        )
    if s.tls_ca is not None and s.tls_cert is None:
        raise ConfigError(
            "DICOMNODE_TLS_CA needs DICOMNODE_TLS_CERT and DICOMNODE_TLS_KEY: client "
            "certificates are only checked on a TLS port"
        )
    if s.tls_client_aes and s.tls_ca is None:
        raise ConfigError(
            "DICOMNODE_TLS_CLIENT_AES needs DICOMNODE_TLS_CA: calling AE titles are tied to client "
            "certificates, which are only asked for with a CA to check them"
        )
    for key, path in (("TLS_CERT", s.tls_cert), ("TLS_KEY", s.tls_key), ("TLS_CA", s.tls_ca)):
        if path is not None and not path.is_file():
            raise ConfigError(f"DICOMNODE_{key}={str(path)!r}: no such file (a PEM file is expected)")
    if s.max_associations < 1:
        raise ConfigError(f"DICOMNODE_MAX_ASSOCIATIONS={s.max_associations}: must be >= 1")
    if s.max_associations_per_peer < 0:
        raise ConfigError(
            f"DICOMNODE_MAX_ASSOCIATIONS_PER_PEER={s.max_associations_per_peer}: use 0 (no cap) or a "
            "number of connections, e.g. 8"
        )
    _require_positive_seconds(
        ("ACSE_TIMEOUT_SECONDS", s.acse_timeout_seconds),
        ("DIMSE_TIMEOUT_SECONDS", s.dimse_timeout_seconds),
        ("NETWORK_TIMEOUT_SECONDS", s.network_timeout_seconds),
    )
    if s.shutdown_grace_seconds < 0:
        raise ConfigError(f"DICOMNODE_SHUTDOWN_GRACE_SECONDS={s.shutdown_grace_seconds}: must be >= 0")
    if s.max_pdu_bytes != 0 and not 4096 <= s.max_pdu_bytes <= (1 << 31) - 1:
        raise ConfigError(
            f"DICOMNODE_MAX_PDU_BYTES={s.max_pdu_bytes}: use 0 (unlimited) or 4096..2147483647, e.g. 1048576"
        )
    if s.max_pending_connections < 0:
        raise ConfigError(
            f"DICOMNODE_MAX_PENDING_CONNECTIONS={s.max_pending_connections}: use 0 (no cap) or a "
            "number of connections, e.g. 64"
        )
    for key, v in (
        ("MAX_DATASET_BYTES", s.max_dataset_bytes),
        ("MIN_FREE_BYTES", s.min_free_bytes),
        ("MAX_INFLATED_BYTES", s.max_inflated_bytes),
    ):
        if v < 0:
            raise ConfigError(f"DICOMNODE_{key}={v}: use a number of bytes >= 0 (0 turns it off), e.g. 1073741824")
    if s.duplicate_policy not in DUPLICATE_POLICIES:
        raise ConfigError(
            f"DICOMNODE_DUPLICATE_POLICY={s.duplicate_policy!r}: use overwrite (replace the stored file) "
            "or ignore (keep the first)"
        )


def load_settings(config_file: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then the TOML file, then ``DICOMNODE_*`` variables; raises :class:`ConfigError`."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    path = config_file or env.get(ENV_PREFIX + "CONFIG")
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"DICOMNODE_CONFIG={str(p)!r}: no such file")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(p)!r} is not valid TOML: {exc}") from None
        section = data.get("dicomnode", data)
        for name, value in section.items():
            if name not in _PARSERS:
                raise ConfigError(f"config file {str(p)!r}: unknown key {name!r}; known: {sorted(_PARSERS)}")
            values[name] = _cast(f"{p.name}:{name}", name, value)
    for name in _PARSERS:
        key = ENV_PREFIX + name.upper()
        if key in env and env[key] != "":
            values[name] = _cast(key, name, env[key])
        elif key in env and name in ("broker_url", "database_url"):
            values[name] = ""
    return _validate(Settings(**values))
