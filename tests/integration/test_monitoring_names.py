"""Every metric the alert rules and the Grafana dashboard name exists in a real ``/metrics``
scrape of a running node that analysed and delivered a study (docker/ cannot drift from the code)."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from pathlib import Path

from dicomnode.config import Settings
from dicomnode.delivery.push import push_files
from dicomnode.node import Node
from dicomnode.ops.metrics import start_metrics_server
from dicomnode.store.db import Store
from dicomnode.testing.pacs import Receiver
from dicomnode.testing.phantoms import write_phantom_studies
from tests.tiny_model import write_tiny_model
from tests.unit.test_monitoring_rules import exported_names, referenced_names


def test_rules_and_dashboard_name_only_metrics_a_running_node_exports(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    node_factory: Callable[[Settings], Node],
    pacs: Receiver,
) -> None:
    settings = make_settings(model=write_tiny_model(tmp_path / "tiny.onnx"))
    node = node_factory(settings)
    st = write_phantom_studies(tmp_path / "in", 1, seed=31)[0]
    assert all(r.status == 0 for r in push_files(st.paths, "127.0.0.1", node.port))
    assert len(pacs.wait_for(2, timeout=300)) == 2
    store = Store(settings.effective_database_url, run_migrations=False)
    server = start_metrics_server(settings, store, port=0)  # as `dicomnode serve` does
    try:
        with urllib.request.urlopen(server.url, timeout=10) as rsp:
            body = rsp.read().decode()
    finally:
        server.stop()
        store.dispose()
    exported = exported_names(body)
    missing = referenced_names() - exported
    assert missing == set(), f"named in docker/ but missing from a real scrape: {missing}"
    # the gauges the new alerts read carry samples, not only their HELP lines
    samples = {line.split("{")[0].split(" ")[0] for line in body.splitlines() if not line.startswith("#")}
    for name in ("dicomnode_stranded_studies", "dicomnode_disk_free_bytes", "dicomnode_deliveries_total"):
        assert name in samples, name
    assert 'dicomnode_urgent_notifications{state="failed"} 0.0' in body
    assert 'dicomnode_destination_down{destination="TESTPACS@127.0.0.1:' in body
