"""docker/prometheus through promtool: the rules parse, the config loads them, and every alert
fires on the synthetic series of alerts.test.yml (and stays silent on the others).

promtool comes with Debian's ``prometheus`` package (``make peers`` installs it); without it the
tests skip, saying so.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

PROMETHEUS = Path(__file__).resolve().parents[2] / "docker" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool not installed: apt-get install prometheus (or `make peers`)")
    return subprocess.run(
        [exe, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120, check=False
    )


def test_promtool_checks_the_rules_and_the_config() -> None:
    rules = promtool("check", "rules", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 9 rules found" in rules.stdout + rules.stderr
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


def test_every_alert_fires_on_its_synthetic_series_and_only_there() -> None:
    result = promtool("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_a_rule_that_never_fires_fails_the_unit_tests(tmp_path: Path) -> None:
    """The unit tests can fail: with one alert's threshold out of reach, promtool reports it."""
    (tmp_path / "alerts.yml").write_text(
        (PROMETHEUS / "alerts.yml")
        .read_text()
        .replace("dicomnode_stranded_studies > 0", "dicomnode_stranded_studies > 1e9")
    )
    shutil.copy(PROMETHEUS / "alerts.test.yml", tmp_path / "alerts.test.yml")
    result = promtool("test", "rules", str(tmp_path / "alerts.test.yml"))
    assert result.returncode != 0
    assert "DicomnodeStrandedStudies" in result.stdout + result.stderr
