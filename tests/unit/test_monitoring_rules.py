"""The Grafana dashboard and the Prometheus alert rules in docker/ against the metrics the code exports.

Every metric a rule or a panel names must be one the collector (dicomnode/ops/metrics.py) yields,
so neither can drift from the code; every runbook link must land on a section of
docs/operations.md. tests/integration/test_alert_rules.py runs promtool on the rules, and
tests/integration/test_monitoring_names.py checks the names against a running node's scrape.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dicomnode.config import Destination, Settings
from dicomnode.ops.metrics import SqlCollector
from dicomnode.store.db import Store

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "docker" / "grafana" / "dicomnode-dashboard.json"
ALERTS = REPO / "docker" / "prometheus" / "alerts.yml"
RUNBOOK = REPO / "docs" / "operations.md"
_METRIC_RE = re.compile(r"\b(dicomnode_[a-z0-9_]+)")


def exported_names(exposition: str) -> set[str]:
    """Family and sample names of a /metrics body (a family without samples still counts)."""
    names: set[str] = set()
    for fam in text_string_to_metric_families(exposition):
        names.add(fam.name)
        names.update(s.name for s in fam.samples)
    return names


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def referenced_names() -> set[str]:
    """Every ``dicomnode_*`` metric name a dashboard query or an alert rule uses."""
    exprs = dashboard_exprs() + [str(r["expr"]) for r in alert_rules()]
    exprs += [v["definition"] for v in dashboard()["templating"]["list"] if "definition" in v]
    return {m for e in exprs for m in _METRIC_RE.findall(e)}


@pytest.fixture
def exposition(tmp_path: Path) -> str:
    """One scrape of the collector over a fresh SQLite store (no server)."""
    settings = Settings(
        storage_dir=tmp_path,
        destinations=(Destination("PACS", "127.0.0.1", 104),),
        model=tmp_path / "none.onnx",
    )
    store = Store(settings.effective_database_url)
    collector = SqlCollector(settings, store)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        return generate_latest(registry).decode()
    finally:
        collector.close()
        store.dispose()


def test_dashboard_and_rules_name_only_metrics_the_collector_exports(exposition: str) -> None:
    exported = exported_names(exposition)
    missing = referenced_names() - exported
    assert missing == set(), f"named in docker/ but not exported by dicomnode/ops/metrics.py: {missing}"


def test_rules_cover_what_issue_17_asks_for() -> None:
    by_name = {r["alert"]: r for r in alert_rules()}
    for alert, metric in (
        ("DicomnodeDestinationDown", "dicomnode_destination_down"),
        ("DicomnodeStrandedStudies", "dicomnode_stranded_studies"),
        ("DicomnodeDeliveryFailed", 'dicomnode_studies{state="delivery_failed"}'),
        ("DicomnodeDriftHigh", "dicomnode_drift_psi"),
        ("DicomnodeDiskLow", "dicomnode_disk_free_bytes"),
        ("DicomnodeUrgentNotificationFailed", "dicomnode_urgent_notifications"),
    ):
        assert metric in str(by_name[alert]["expr"]), alert


def test_every_alert_says_what_to_do_and_links_a_runbook_section() -> None:
    headings = {
        re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+\s+(.+)$", RUNBOOK.read_text(), re.MULTILINE)
    }
    for rule in alert_rules():
        ann = rule["annotations"]
        assert ann["summary"] and len(ann["description"]) > 80, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        path, _, anchor = ann["runbook_url"].partition("#")
        assert path == "docs/operations.md" and anchor == rule["alert"].lower(), rule["alert"]
        assert anchor in headings, f"docs/operations.md has no section for {rule['alert']}"


def test_dashboard_is_importable_with_a_chosen_prometheus_and_has_the_panels_operators_need() -> None:
    d = dashboard()
    assert d["uid"] and d["title"] and isinstance(d["schemaVersion"], int)
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in d["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"] and all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"]), p[
            "title"
        ]
        assert all('instance=~"$instance"' in t["expr"] for t in p["targets"]), p["title"]
        grid = p["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, p["title"]
    exprs = " ".join(dashboard_exprs())
    for needed in (
        "histogram_quantile(0.5, sum by (le) (rate(dicomnode_time_to_notification_seconds_bucket",
        "histogram_quantile(0.95, sum by (le) (rate(dicomnode_time_to_notification_seconds_bucket",
        "dicomnode_queue_depth",
        "dicomnode_deliveries_total",
        "dicomnode_delivery_failures_total",
        "dicomnode_studies",
        "dicomnode_drift_psi",
        "dicomnode_destination_down",
        "dicomnode_disk_free_bytes",
    ):
        assert needed in exprs, needed
