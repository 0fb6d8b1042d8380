"""One naming for settings: the example TOML file, ``--config`` on either side of the subcommand,
and validated log settings (issue 18.3).

A TOML key is the environment variable's name without ``DICOMNODE_``, in lower case; the example
file docs/dicomnode.example.toml names every setting and loads to the defaults.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomnode.cli import main
from dicomnode.config import ENV_PREFIX, ConfigError, Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "dicomnode.example.toml"
#: a commented-out key: ``# tls_cert = "..."`` (settings whose default is "unset")
_COMMENTED_KEY = re.compile(r"^#\s*([a-z][a-z0-9_]*)\s*=", re.MULTILINE)


@pytest.fixture
def no_settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The commands run on their arguments and files only, whatever this shell has set."""
    import os

    for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)
    yield


def _fields() -> set[str]:
    return {f.name for f in dataclasses.fields(Settings) if f.name != "extra"}


def test_example_file_names_every_setting_and_only_settings() -> None:
    text = EXAMPLE.read_text()
    keys = set(tomllib.loads(text)["dicomnode"]) | set(_COMMENTED_KEY.findall(text))
    assert sorted(_fields() - keys) == [], "add these settings to docs/dicomnode.example.toml"
    assert sorted(keys - _fields()) == [], "docs/dicomnode.example.toml names keys that are not settings"


def test_example_file_loads_to_the_defaults() -> None:
    assert load_settings(EXAMPLE, env={}) == Settings()


def test_toml_key_is_the_variable_name_lower_case_without_prefix(tmp_path: Path) -> None:
    """The same value by either name gives the same settings, for every setting the file sets."""
    values = tomllib.loads(EXAMPLE.read_text())["dicomnode"]
    for key, value in values.items():
        env_value = (
            ",".join(value)
            if isinstance(value, list)
            else str(value).lower()
            if isinstance(value, bool)
            else str(value)
        )
        by_env = load_settings(env={ENV_PREFIX + key.upper(): env_value})
        (tmp_path / "one.toml").write_text(f"[dicomnode]\n{key} = {_toml(value)}\n")
        by_file = load_settings(tmp_path / "one.toml", env={})
        assert getattr(by_env, key) == getattr(by_file, key), key


def _toml(value: object) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)  # strings, numbers and lists of strings are the same in JSON and TOML


def test_readme_says_how_toml_keys_are_named() -> None:
    readme = (REPO / "README.md").read_text()
    assert "docs/dicomnode.example.toml" in readme
    assert "`quiet_seconds`" in readme  # the worked example of the naming rule


@pytest.mark.parametrize("where", ["before", "after"])
def test_config_works_before_or_after_the_subcommand(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_settings_env: None
) -> None:
    storage = tmp_path / "from-the-file"
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[dicomnode]\nstorage_dir = "{storage}"\n')
    args = ["--config", str(cfg), "migrate"] if where == "before" else ["migrate", "--config", str(cfg)]
    assert main(args) == 0
    assert (storage / "dicomnode.sqlite3").is_file()  # the file's storage_dir was used
    rest = ["results"] if where == "before" else ["results", "--config", str(cfg)]
    prefix = ["--config", str(cfg)] if where == "before" else []
    assert main([*prefix, *rest]) == 0, capsys.readouterr().err


def test_config_after_the_subcommand_wins_over_one_before(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_settings_env: None
) -> None:
    first, second = tmp_path / "a.toml", tmp_path / "b.toml"
    first.write_text(f'[dicomnode]\nstorage_dir = "{tmp_path / "a"}"\n')
    second.write_text(f'[dicomnode]\nstorage_dir = "{tmp_path / "b"}"\n')
    assert main(["--config", str(first), "migrate", "--config", str(second)]) == 0
    assert (tmp_path / "b").is_dir() and not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    ("key", "value", "listed"),
    [
        ("DICOMNODE_LOG_LEVEL", "verbose", "debug, info, warning, error, critical"),
        ("DICOMNODE_LOG_FORMAT", "text", "console, json"),
    ],
)
def test_bad_log_setting_is_refused_listing_the_valid_values(
    key: str, value: str, listed: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match=f"{key}='{value}'.*{listed}"):
        load_settings(env={key: value})
    monkeypatch.setenv(key, value)
    assert main(["results"]) == 2
    err = capsys.readouterr().err
    assert key in err and listed in err and "Traceback" not in err


def test_log_level_in_capitals_is_accepted() -> None:
    assert load_settings(env={"DICOMNODE_LOG_LEVEL": "WARNING"}).log_level == "warning"


def test_bad_log_level_in_the_file_names_the_file_key(tmp_path: Path) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text('[dicomnode]\nlog_level = "loud"\n')
    with pytest.raises(ConfigError, match="LOG_LEVEL='loud'"):
        load_settings(cfg, env={})
