"""The settings as documented against the settings in the code (dicomnode/config.py).

tests/unit/test_docker.py checks that every ``DICOMNODE_*`` name in docker/ and docs/ is a real
setting. This adds the other direction and the values: the README table lists every setting and
only settings, its literal defaults are the code's, compose passes every setting to the node, and
the defaults written in compose, env.example and the code agree (or differ for a stated reason).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from dicomnode.config import ENV_PREFIX, ConfigError, Settings, load_settings
from tests.unit.test_docker import env_example, raw_compose, service_env, setting_names

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"

#: Settings the environment sets but no table row needs: the TOML file's path.
NOT_A_FIELD = {ENV_PREFIX + "CONFIG"}
#: compose/env.example defaults that differ from the code's on purpose, and why.
DOCKER_DIFFERS = {
    ENV_PREFIX + "LOG_FORMAT": "containers log JSON for `docker compose logs` and log shippers",
    ENV_PREFIX + "METRICS_HOST": "a published port reaches the container's address, not its loopback",
    ENV_PREFIX + "MODEL": "the model is the file mounted under /models, not the demo under /data",
    ENV_PREFIX + "STORAGE_DIR": "the storage volume is mounted at /data",
    ENV_PREFIX + "DATABASE_URL": "the postgres service",
    ENV_PREFIX + "BROKER_URL": "the redis service",
}
#: ``${NAME:-default}`` in compose
_DEFAULT_RE = re.compile(r"^\$\{(?P<name>[A-Z0-9_]+):-(?P<default>[^}]*)\}$")


def settings_fields() -> set[str]:
    return setting_names() - NOT_A_FIELD


def expand_shorthand(full: str, suffix: str) -> str:
    """``_BODY_PARTS`` after ``DICOMNODE_SELECT_MODALITIES``: the longest prefix of ``full`` (cut at
    an underscore) that makes a setting with ``suffix``; with none, the name without its last word
    (then reported as not a setting)."""
    words = full.split("_")
    for cut in range(len(words) - 1, 1, -1):
        candidate = "_".join(words[:cut]) + suffix
        if candidate in setting_names():
            return candidate
    return full.rsplit("_", 1)[0] + suffix


def readme_settings_rows() -> list[tuple[list[str], list[str]]]:
    """(names, cells) of every row of the README's settings table(s): a row whose first cell names
    ``DICOMNODE_*`` settings, shorthand (``/ _BODY_PARTS``) expanded by :func:`expand_shorthand`."""
    rows = []
    for line in README.read_text().splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        names: list[str] = []
        for code in re.findall(r"`([^`]+)`", cells[0]):
            if code.startswith(ENV_PREFIX):
                names.append(code)
            elif re.fullmatch(r"_[A-Z0-9_]+", code) and names:
                names.append(expand_shorthand(names[0], code))
        if names:
            rows.append((names, cells))
    return rows


def _as_setting(name: str, value: str) -> Any:
    """What ``value`` of the environment variable ``name`` loads as."""
    field = name.removeprefix(ENV_PREFIX).lower()
    return getattr(load_settings(env={name: value}), field)


def _default(name: str) -> Any:
    return getattr(Settings(), name.removeprefix(ENV_PREFIX).lower())


# --------------------------------------------------------------------------- README table


def test_readme_table_lists_every_setting() -> None:
    documented = {n for names, _ in readme_settings_rows() for n in names}
    missing = sorted(settings_fields() - documented)
    assert missing == [], f"add a row to the README settings table for {missing}"


def test_readme_table_lists_only_settings() -> None:
    documented = {n for names, _ in readme_settings_rows() for n in names}
    unknown = sorted(documented - setting_names())
    assert unknown == [], f"the README settings table names settings that do not exist: {unknown}"


def test_readme_table_lists_each_setting_once() -> None:
    names = [n for row, _ in readme_settings_rows() for n in row]
    assert sorted({n for n in names if names.count(n) > 1}) == []


def test_readme_table_literal_defaults_are_the_codes_defaults() -> None:
    """A default that is one code span (`8`, `overwrite`, `CR,DX`; `10` / `120` for a row of two
    settings) is what the code uses; prose ("SQLite under the storage dir") is not checked."""
    checked = 0
    for names, cells in readme_settings_rows():
        if len(cells) < 3:
            continue
        parts = [p.strip() for p in cells[1].split(" / ")]
        if len(parts) != len(names):
            continue
        for name, part in zip(names, parts, strict=True):
            m = re.fullmatch(r"`([^`]*)`", part)
            if not m:
                continue
            literal = m.group(1).removeprefix("./")
            try:
                documented = _as_setting(name, literal)
            except ConfigError as exc:
                pytest.fail(f"README default of {name} is not a valid value: {exc}")
            assert documented == _default(name), f"README says {name} defaults to {literal!r}"
            checked += 1
    assert checked >= 20  # the table has at least this many literal defaults: the parser found them


# --------------------------------------------------------------------------- compose and env.example


def _node_environment() -> dict[str, str]:
    return service_env(raw_compose()["services"]["node"])


def test_compose_passes_every_setting_to_the_node() -> None:
    """docs/deploy-docker.md: compose lists every setting, so any of them can be set in docker/.env."""
    missing = sorted(settings_fields() - set(_node_environment()))
    assert missing == [], f"add these to docker/compose.yaml (node, or x-dicomnode-env): {missing}"


def test_env_example_mentions_every_setting_compose_takes_from_env() -> None:
    from_env = {
        m.group("name")
        for value in _node_environment().values()
        if (m := _DEFAULT_RE.match(value)) and m.group("name").startswith(ENV_PREFIX)
    }
    missing = sorted(from_env - set(env_example()))
    assert missing == [], f"add these (commented, with their default) to docker/env.example: {missing}"


def test_compose_env_example_and_code_agree_on_defaults() -> None:
    example = env_example()
    for key, value in _node_environment().items():
        m = _DEFAULT_RE.match(value)
        if not key.startswith(ENV_PREFIX) or not m:
            continue  # fixed in the container (port, storage, URLs)
        assert m.group("name") == key, f"compose sets {key} from ${{{m.group('name')}}}"
        compose_default = m.group("default")
        if key in example and example[key] != "":
            assert _as_setting(key, example[key]) == _as_setting(key, compose_default or example[key]), (
                f"{key}: env.example says {example[key]!r}, compose defaults to {compose_default!r}"
            )
        if key in DOCKER_DIFFERS or compose_default == "":
            continue
        assert _as_setting(key, compose_default) == _default(key), (
            f"{key}: compose defaults to {compose_default!r}, the code to {_default(key)!r}; "
            "make them agree or add the reason to DOCKER_DIFFERS"
        )


def test_docker_differences_are_still_differences() -> None:
    """A reason in DOCKER_DIFFERS for a default that now agrees would hide the next change."""
    node = _node_environment()
    for key in DOCKER_DIFFERS:
        value = node[key]
        m = _DEFAULT_RE.match(value)
        in_container = m.group("default") if m else value
        assert in_container and _as_setting(key, in_container) != _default(key), key


def test_settings_fields_are_what_the_environment_sets() -> None:
    """The helpers above derive names from the dataclass: each loads from its variable."""
    for f in dataclasses.fields(Settings):
        if f.name == "extra":
            continue
        assert ENV_PREFIX + f.name.upper() in setting_names()
