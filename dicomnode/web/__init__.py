"""The web worklist and status page of a node: server-rendered HTML, no JavaScript.

- :mod:`~dicomnode.web.app`: the Starlette app (worklist, studies, model, health, resend)
- :mod:`~dicomnode.web.pages`: what each page shows, from :mod:`dicomnode.ops` and the store's queries
- :mod:`~dicomnode.web.auth`: token login, session cookie, CSRF, the loopback Host check
- :mod:`~dicomnode.web.resend`: the resend button's thread (``dicomnode resend`` for one study)
- :mod:`~dicomnode.web.thumbnails`, :mod:`~dicomnode.web.names`: heatmap PNGs and patient names
- :mod:`~dicomnode.web.plots`: measures over time as SVG
- :mod:`~dicomnode.web.server`: uvicorn on a thread (``dicomnode serve``, ``dicomnode web``)

Settings: ``DICOMNODE_WEB_PORT`` (0: off), ``DICOMNODE_WEB_HOST``, ``DICOMNODE_WEB_TOKEN``,
``DICOMNODE_WEB_SHOW_PATIENT_NAMES`` (docs/operations.md, "Web worklist").
"""

from dicomnode.web.server import WebServer, start_web_server

__all__ = ["WebServer", "start_web_server"]
