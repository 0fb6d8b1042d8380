from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.config import ConfigError, Destination, load_settings


def test_defaults_need_nothing_configured() -> None:
    s = load_settings(env={})
    assert (s.ae_title, s.port, s.quiet_seconds, s.broker_url) == ("DICOMNODE", 11112, 5.0, "")
    assert s.effective_database_url.startswith("sqlite:///") and s.effective_database_url.endswith(
        "dicomnode.sqlite3"
    )
    assert s.model_path.name == "pneumonia-demo.onnx"


def test_environment_overrides_file(tmp_path: Path) -> None:
    f = tmp_path / "node.toml"
    f.write_text('[dicomnode]\nae_title = "FROMFILE"\nport = 104\ndestinations = ["PACS@10.0.0.5:104"]\n')
    s = load_settings(f, env={"DICOMNODE_PORT": "11113", "DICOMNODE_QUIET_SECONDS": "2.5"})
    assert s.ae_title == "FROMFILE" and s.port == 11113 and s.quiet_seconds == 2.5
    assert s.destinations == (Destination("PACS", "10.0.0.5", 104),)


def test_destinations_parse_comma_separated() -> None:
    s = load_settings(env={"DICOMNODE_DESTINATIONS": "PACS@10.0.0.5:104, VNA@vna.local:11112"})
    assert [str(d) for d in s.destinations] == ["PACS@10.0.0.5:104", "VNA@vna.local:11112"]


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"DICOMNODE_PORT": "eleven"}, "DICOMNODE_PORT"),
        ({"DICOMNODE_PORT": "70000"}, "DICOMNODE_PORT"),
        ({"DICOMNODE_AE_TITLE": "A" * 17}, "DICOMNODE_AE_TITLE"),
        ({"DICOMNODE_DESTINATIONS": "PACS@10.0.0.5"}, "e.g. PACS@10.0.0.5:104"),
        ({"DICOMNODE_QUIET_SECONDS": "-1"}, "DICOMNODE_QUIET_SECONDS"),
        ({"DICOMNODE_BROKER_URL": "localhost:6379"}, "DICOMNODE_BROKER_URL"),
        ({"DICOMNODE_MODEL": "model.pt"}, "DICOMNODE_MODEL"),
    ],
)
def test_bad_setting_fails_naming_the_key(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_settings(env=env)


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "node.toml"
    f.write_text("ae_titel = 'X'\n")
    with pytest.raises(ConfigError, match="ae_titel"):
        load_settings(f, env={})


def test_cli_reports_config_error_and_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dicomnode.cli import main

    monkeypatch.setenv("DICOMNODE_PORT", "notaport")
    assert main(["results"]) == 2
    assert "DICOMNODE_PORT" in capsys.readouterr().err


def test_to_env_round_trips_every_setting(tmp_path: Path) -> None:
    from dicomnode.config import Settings

    s = Settings(
        storage_dir=tmp_path,
        destinations=(Destination("PACS", "10.0.0.5", 104),),
        select_views=("PA", ""),
        fsync=False,
        quiet_seconds=1.5,
    )
    back = load_settings(env=s.to_env())
    assert back == s.with_overrides(database_url=s.effective_database_url, model=s.model_path)
