"""docker/ and docs/ checked without a Docker engine.

The compose file must parse, every command it runs must be a real ``dicomnode`` subcommand (or
Celery on our app), every ``DICOMNODE_*`` variable it sets must be a real setting and load, and
the images must be what the deployment guide says: the node without torch and not as root, the
GPU worker with onnxruntime-gpu instead of onnxruntime. Links between docs/ files must resolve.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import re
import shlex
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dicomnode.cli import build_parser
from dicomnode.config import ENV_PREFIX, ConfigError, Settings, load_settings
from dicomnode.storage import IMPLEMENTATION_VERSION_NAME

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCS = REPO / "docs"
COMPOSE_FILE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / "env.example"
NODE_DOCKERFILE = DOCKER / "Dockerfile.node"
GPU_DOCKERFILE = DOCKER / "Dockerfile.worker-gpu"

#: Values for the variables compose requires (``${VAR:?...}``) when interpolating in tests.
REQUIRED_VARS = {"POSTGRES_PASSWORD": "0123abcd"}
#: Services that run our images, and the worker services among them.
OUR_SERVICES = ("migrate", "node", "worker", "worker-cpu", "flower")
WORKERS = ("worker", "worker-cpu")

#: ``$$``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?err}``, ``${VAR?err}``, ``$VAR``
_VAR_RE = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


# --------------------------------------------------------------------------- settings


def setting_names() -> set[str]:
    """``DICOMNODE_*`` names that map to a field of :class:`Settings`, plus DICOMNODE_CONFIG."""
    fields = {f.name for f in dataclasses.fields(Settings)} - {"extra"}
    return {ENV_PREFIX + name.upper() for name in fields} | {ENV_PREFIX + "CONFIG"}


def unknown_settings(names: set[str]) -> list[str]:
    return sorted(n for n in names if n.startswith(ENV_PREFIX) and n not in setting_names())


# --------------------------------------------------------------------------- compose


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose-style variable interpolation: defaults used when ``env`` lacks the variable."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        value = env.get(name)
        if op in (":-", "-"):
            use_default = value is None or (op == ":-" and value == "")
            return arg if use_default else str(value)
        if op in (":?", "?") and (value is None or (op == ":?" and value == "")):
            raise KeyError(f"compose needs {name}: {arg}")
        return "" if value is None else str(value)

    return _VAR_RE.sub(sub, text)


def variables_in(text: str) -> set[str]:
    """Names of the variables interpolated in ``text``."""
    return {m.group("braced") or m.group("bare") for m in _VAR_RE.finditer(text) if m.group(0) != "$$"}


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in [*_strings(k), *_strings(v)]]
    return []


def _interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interpolate_tree(v, env) for v in node]
    if isinstance(node, dict):
        return {k: _interpolate_tree(v, env) for k, v in node.items()}
    return node


def raw_compose() -> dict[str, Any]:
    """The compose file's YAML (anchors and merge keys resolved), not yet interpolated."""
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read docker/compose.yaml")
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def load_compose(env: Mapping[str, str] = REQUIRED_VARS) -> dict[str, Any]:
    """The compose file as compose sees it: YAML, then variable interpolation."""
    return _interpolate_tree(raw_compose(), env)


def compose_variables() -> set[str]:
    """Every variable the compose file interpolates (comments are not read)."""
    return {name for text in _strings(raw_compose()) for name in variables_in(text)}


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def env_example() -> dict[str, str]:
    """Variables of docker/env.example, commented-out ones included."""
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if m:
            out[m.group(1)] = m.group(2)
    return out


# --------------------------------------------------------------------------- Dockerfiles


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


@dataclass
class Dockerfile:
    path: Path
    args: dict[str, str]  # ARG defaults, global and per stage
    stages: list[Stage]

    def stage(self, name: str | None = None) -> Stage:
        """A stage by name; the last one (the default build target) when ``name`` is None."""
        if name is None:
            return self.stages[-1]
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"{self.path.name} has no stage {name!r}")

    def lineage(self, stage: Stage) -> list[Stage]:
        """``stage``, the stages it is built FROM, and the stages it copies from (recursively)."""
        out: list[Stage] = []
        todo = [stage]
        names = {s.name for s in self.stages}
        while todo:
            s = todo.pop()
            if s in out:
                continue
            out.append(s)
            if s.base in names:
                todo.append(self.stage(s.base))
            for rest in s.all("COPY"):
                m = re.search(r"--from=(\S+)", rest)
                if m and m.group(1) in names:
                    todo.append(self.stage(m.group(1)))
        return out

    def inherited(self, stage: Stage, keyword: str) -> str | None:
        """The last ``keyword`` in force in ``stage``, looking up through FROM stages."""
        names = {s.name for s in self.stages}
        s: Stage | None = stage
        while s is not None:
            value = s.last(keyword)
            if value is not None:
                return value
            s = self.stage(s.base) if s.base in names else None
        return None

    def resolve(self, text: str) -> str:
        return interpolate(text, self.args)


def parse_dockerfile(path: Path) -> Dockerfile:
    """Instructions of a Dockerfile grouped by stage (continuations joined, comments dropped)."""
    logical: list[str] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            args.setdefault(name, default.strip('"'))
        if keyword == "FROM":
            m = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            assert m, f"{path.name}: cannot read FROM {rest!r}"
            stages.append(Stage(base=m.group(1), name=m.group(2) or str(len(stages))))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
    return Dockerfile(path, args, stages)


def exec_form(value: str | None) -> list[str]:
    """The argv of an exec-form (JSON array) ENTRYPOINT/CMD; a shell form is split by shlex."""
    if not value:
        return []
    if value.startswith("["):
        return list(json.loads(value))
    return shlex.split(value)


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell line, split at ``&&``, ``||``, ``;`` and ``|`` (quotes kept)."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def pip_installs(dockerfile: Dockerfile, stage: Stage) -> list[list[str]]:
    """The arguments of every ``pip install``/``pip uninstall`` run for ``stage``, ARGs resolved."""
    out = []
    for s in dockerfile.lineage(stage):
        for run in s.all("RUN"):
            for words in shell_commands(dockerfile.resolve(run)):
                for i, w in enumerate(words[:-1]):
                    if w.endswith("pip") and words[i + 1] in ("install", "uninstall"):
                        out.append(words[i + 1 :])
    return out


def requirement_name(spec: str) -> str:
    m = re.match(r"[A-Za-z0-9_.-]+", spec)
    return m.group(0).lower().replace("_", "-") if m else ""


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


# --------------------------------------------------------------------------- the compose file


def test_compose_file_defines_the_deployment_services() -> None:
    services = load_compose()["services"]
    assert {"redis", "postgres", "migrate", "node", "worker", "worker-cpu", "flower"} <= set(services)


def _dockerfile_of(service: Mapping[str, Any]) -> Path:
    build = service["build"]
    return (DOCKER / build["context"] / build["dockerfile"]).resolve()


def _argv(name: str, service: Mapping[str, Any]) -> list[str]:
    """What the service's container runs: its entrypoint and command, or the image's."""
    df = parse_dockerfile(_dockerfile_of(service))
    stage = df.stage(service["build"].get("target"))
    entrypoint = service.get("entrypoint") or exec_form(df.inherited(stage, "ENTRYPOINT"))
    command = service.get("command") or exec_form(df.inherited(stage, "CMD"))
    assert isinstance(entrypoint, list) and isinstance(command, list), f"{name}: use exec form lists"
    return [*entrypoint, *command]


def _parses_as_dicomnode(argv: list[str], where: str) -> Any:
    assert argv[0] == "dicomnode", f"{where}: {argv}"
    try:
        return build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{where}: `{shlex.join(argv)}` is not a valid dicomnode command line")


def _assert_celery_on_our_app(argv: list[str], where: str) -> None:
    assert argv[0] == "celery", where
    assert argv[1:3] == ["-A", "worker.app"], f"{where}: Celery must load our app: {argv}"
    assert importlib.util.find_spec("worker.app") is not None


@pytest.mark.parametrize("name", OUR_SERVICES)
def test_every_service_runs_a_real_dicomnode_subcommand_or_celery_on_our_app(name: str) -> None:
    service = load_compose()["services"][name]
    argv = _argv(name, service)
    if argv[0] == "celery":
        _assert_celery_on_our_app(argv, name)
    else:
        _parses_as_dicomnode(argv, f"service {name}")


def test_services_run_the_subcommands_their_names_promise() -> None:
    services = load_compose()["services"]
    assert _argv("migrate", services["migrate"])[1] == "migrate"
    assert _argv("node", services["node"])[1] == "serve"
    for name in WORKERS:
        assert _argv(name, services[name])[1] == "worker"
    assert _argv("flower", services["flower"])[3] == "flower"


def test_every_dicomnode_variable_in_docker_is_a_setting() -> None:
    names = compose_variables() | set(env_example())
    for service in load_compose()["services"].values():
        names |= set(service_env(service))
    for path in (NODE_DOCKERFILE, GPU_DOCKERFILE):
        for stage in parse_dockerfile(path).stages:
            for env in stage.all("ENV"):
                names |= set(re.findall(r"\b(DICOMNODE_[A-Z0-9_]+)=", env))
    assert unknown_settings(names) == [], (
        f"not settings of dicomnode.config.Settings: {unknown_settings(names)}"
    )


@pytest.mark.parametrize("name", OUR_SERVICES)
def test_service_environment_loads_as_valid_settings(name: str) -> None:
    env = service_env(load_compose()["services"][name])
    try:
        load_settings(env=env)
    except ConfigError as exc:
        pytest.fail(f"service {name}: {exc}")


def test_env_example_loads_as_valid_settings() -> None:
    values = env_example()
    env = {k: v for k, v in values.items() if k.startswith(ENV_PREFIX)}
    load_settings(env=env)
    # and the compose file built from env.example still yields valid settings for every service
    services = load_compose({**values, **REQUIRED_VARS})["services"]
    for name in OUR_SERVICES:
        load_settings(env=service_env(services[name]))


def test_every_compose_variable_is_explained_in_env_example() -> None:
    used = compose_variables()
    documented = set(env_example())
    assert used - documented == set(), "add these to docker/env.example"
    # and nothing in env.example is dead (COMPOSE_PROFILES is read by compose itself)
    assert documented - used - {"COMPOSE_PROFILES"} == set()


def test_env_example_profiles_exist_in_compose() -> None:
    profiles = {p for s in load_compose()["services"].values() for p in s.get("profiles", [])}
    assert env_example()["COMPOSE_PROFILES"] in profiles
    assert profiles == {"gpu", "cpu", "monitoring"}


def test_node_workers_and_migrations_agree_on_every_shared_setting() -> None:
    services = load_compose()["services"]
    shared = ("STORAGE_DIR", "DATABASE_URL", "BROKER_URL", "QUEUE", "AE_TITLE", "DESTINATIONS", "MODEL")
    envs = {name: service_env(services[name]) for name in ("migrate", "node", *WORKERS)}
    for key in shared:
        values = {name: env.get(ENV_PREFIX + key) for name, env in envs.items()}
        assert len(set(values.values())) == 1, f"{ENV_PREFIX}{key} differs: {values}"
    assert envs["node"][ENV_PREFIX + "DATABASE_URL"].startswith("postgresql+psycopg://")
    assert envs["node"][ENV_PREFIX + "BROKER_URL"].startswith("redis://redis:")


def test_node_and_workers_share_the_storage_volume_at_the_storage_dir() -> None:
    compose = load_compose()
    services = compose["services"]
    storage_dir = service_env(services["node"])[ENV_PREFIX + "STORAGE_DIR"]
    mounts = {}
    for name in ("node", *WORKERS):
        volumes = [v for v in services[name]["volumes"] if v.split(":")[1] == storage_dir]
        assert len(volumes) == 1, f"{name} must mount the storage volume at {storage_dir}"
        mounts[name] = volumes[0].split(":")[0]
    assert len(set(mounts.values())) == 1, mounts
    assert set(mounts.values()) <= set(compose["volumes"])


def test_workers_mount_the_model_the_settings_name() -> None:
    services = load_compose()["services"]
    for name in WORKERS:
        model = Path(service_env(services[name])[ENV_PREFIX + "MODEL"])
        targets = [Path(v.split(":")[1]) for v in services[name]["volumes"]]
        assert any(t in model.parents for t in targets), f"{name}: no volume holds {model}"


def test_migrations_run_once_before_node_and_workers_start() -> None:
    services = load_compose()["services"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"].get("restart", "no") == "no"
    for name in ("node", *WORKERS):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["redis"]["condition"] == "service_healthy", name


def test_every_service_waited_on_as_healthy_has_a_healthcheck() -> None:
    services = load_compose()["services"]
    for name, service in services.items():
        for dep, how in (service.get("depends_on") or {}).items():
            if how.get("condition") == "service_healthy":
                assert services[dep].get("healthcheck", {}).get("test"), f"{name} waits on {dep}"


def test_node_healthcheck_is_a_c_echo_to_its_own_ae_title_and_port() -> None:
    node = load_compose()["services"]["node"]
    test = node["healthcheck"]["test"]
    assert test[0] == "CMD"
    args = _parses_as_dicomnode(test[1:], "node healthcheck")
    env = service_env(node)
    assert args.command == "echo"
    assert args.called_ae == env[ENV_PREFIX + "AE_TITLE"]
    assert args.port == int(env[ENV_PREFIX + "PORT"])
    published = [p.rsplit(":", 1)[1] for p in node["ports"]]
    assert published == [env[ENV_PREFIX + "PORT"]], "publish the port the SCP listens on"


@pytest.mark.parametrize("name", WORKERS)
def test_worker_healthcheck_is_a_celery_ping_of_itself(name: str) -> None:
    test = load_compose()["services"][name]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    argv = shlex.split(test[1])
    _assert_celery_on_our_app(argv, f"{name} healthcheck")
    assert argv[3:5] == ["inspect", "ping"]
    assert argv[argv.index("--destination") + 1] == "celery@$HOSTNAME"


def test_gpu_worker_reserves_an_nvidia_gpu_and_uses_the_gpu_image() -> None:
    worker = load_compose()["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert worker["build"]["dockerfile"] == "docker/" + GPU_DOCKERFILE.name


def test_flower_ui_is_published_on_loopback_only() -> None:
    for port in load_compose()["services"]["flower"]["ports"]:
        assert port.startswith("127.0.0.1:"), port


@pytest.mark.parametrize("name", OUR_SERVICES)
def test_builds_name_existing_dockerfiles_and_stages(name: str) -> None:
    service = load_compose()["services"][name]
    build = service["build"]
    assert (DOCKER / build["context"]).resolve() == REPO, "the build context is the repository root"
    path = _dockerfile_of(service)
    assert path.is_file(), path
    parse_dockerfile(path).stage(build.get("target"))  # KeyError when the target is missing


# --------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("path", [NODE_DOCKERFILE, GPU_DOCKERFILE], ids=lambda p: p.name)
def test_dockerfile_entrypoints_are_installed_executables(path: Path) -> None:
    project = pyproject()
    dependencies = {requirement_name(d) for d in project["project"]["dependencies"]}
    df = parse_dockerfile(path)
    for stage in df.stages:
        argv = exec_form(df.inherited(stage, "ENTRYPOINT")) + exec_form(df.inherited(stage, "CMD"))
        if not stage.all("ENTRYPOINT"):
            continue
        if argv[0] == "dicomnode":
            assert "dicomnode" in project["project"]["scripts"]
            _parses_as_dicomnode(argv, f"{path.name} stage {stage.name}")
        elif argv[0] == "celery":
            assert "celery" in dependencies
            _assert_celery_on_our_app(argv, f"{path.name} stage {stage.name}")
            if "flower" in argv:
                installed = {requirement_name(a) for cmd in pip_installs(df, stage) for a in cmd}
                assert "flower" in installed, f"{stage.name} runs flower but never installs it"
        else:
            pytest.fail(f"{path.name} stage {stage.name}: unexpected entrypoint {argv}")


@pytest.mark.parametrize("path", [NODE_DOCKERFILE, GPU_DOCKERFILE], ids=lambda p: p.name)
def test_dockerfile_healthcheck_runs_a_real_command(path: Path) -> None:
    df = parse_dockerfile(path)
    final = df.stage()
    check = final.last("HEALTHCHECK")
    assert check, f"{path.name}: the default target needs a HEALTHCHECK"
    argv = shlex.split(interpolate(check.split(" CMD ", 1)[1], {"HOSTNAME": "abc123"}))
    if argv[0] == "dicomnode":
        assert _parses_as_dicomnode(argv, f"{path.name} HEALTHCHECK").command == "echo"
    else:
        _assert_celery_on_our_app(argv, f"{path.name} HEALTHCHECK")
        assert argv[3:5] == ["inspect", "ping"]


@pytest.mark.parametrize("path", [NODE_DOCKERFILE, GPU_DOCKERFILE], ids=lambda p: p.name)
def test_images_run_as_a_non_root_user(path: Path) -> None:
    df = parse_dockerfile(path)
    for stage in df.stages:
        if not stage.all("ENTRYPOINT"):
            continue  # build stages run as root to install
        user = df.inherited(stage, "USER")
        assert user, f"{path.name} stage {stage.name} runs as root: add USER"
        assert user.split(":")[0] not in ("root", "0"), f"{path.name} stage {stage.name}: USER {user}"


def test_node_image_does_not_install_torch() -> None:
    df = parse_dockerfile(NODE_DOCKERFILE)
    for stage in df.stages:
        for cmd in pip_installs(df, stage):
            if cmd[0] != "install":
                continue
            names = {requirement_name(a) for a in cmd[1:] if not a.startswith("-")}
            assert "torch" not in names, f"stage {stage.name} installs torch"
            assert not any("[" in a and "train" in a for a in cmd), f"stage {stage.name}: {cmd}"
    installs = [c for c in pip_installs(df, df.stage()) if c[0] == "install"]
    assert ["install", "."] in installs, "the node image installs the package without extras"


def test_gpu_image_installs_onnxruntime_gpu_and_removes_onnxruntime() -> None:
    df = parse_dockerfile(GPU_DOCKERFILE)
    final = df.stage()
    commands = pip_installs(df, final)
    installed = [requirement_name(a) for c in commands if c[0] == "install" for a in c[1:]]
    removed = [requirement_name(a) for c in commands if c[0] == "uninstall" for a in c[1:]]
    assert "onnxruntime-gpu" in installed
    assert "onnxruntime" not in installed, "onnxruntime (CPU) must not be installed explicitly"
    assert "onnxruntime" in removed, "the CPU wheel pulled in by the package must be removed"
    order = [(c[0], requirement_name(a)) for c in commands for a in c[1:]]
    assert order.index(("uninstall", "onnxruntime")) < order.index(("install", "onnxruntime-gpu"))
    assert "torch" not in installed
    assert re.match(r"nvidia/cuda:[\d.]+-cudnn-runtime-", df.resolve(final.base))


@pytest.mark.parametrize("path", [NODE_DOCKERFILE, GPU_DOCKERFILE], ids=lambda p: p.name)
def test_dockerfile_copies_only_paths_that_exist_and_ignores_the_venv(path: Path) -> None:
    df = parse_dockerfile(path)
    sources = []
    for stage in df.stages:
        for rest in stage.all("COPY"):
            if "--from=" in rest:
                continue
            sources += shlex.split(rest)[:-1]
    assert sources, f"{path.name} copies nothing from the build context"
    for src in sources:
        assert (REPO / src).exists(), f"{path.name}: COPY {src} does not exist in the repository"
    ignore = path.with_name(path.name + ".dockerignore")
    assert ignore.is_file(), f"{ignore.name} keeps .venv out of the build context"
    patterns = {line.strip() for line in ignore.read_text().splitlines()}
    assert {".venv", ".git"} <= patterns
    assert not patterns & set(sources), "the ignore file drops a path the Dockerfile copies"


# --------------------------------------------------------------------------- docs


_LINK_RE = re.compile(r"\]\(([^)\s]+)\)")
#: shell code blocks and inline code spans (diagrams in plain ``` blocks are not commands)
_CODE_RE = re.compile(r"```(?:sh|bash|console)\n.*?```|`[^`\n]+`", re.DOTALL)


def subcommands() -> set[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(action.choices)


def _doc_files() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def test_docs_exist_and_the_index_links_every_page() -> None:
    pages = _doc_files()
    assert DOCS / "README.md" in pages
    index = (DOCS / "README.md").read_text()
    for page in pages:
        if page.name != "README.md":
            assert f"({page.name}" in index, f"docs/README.md does not link {page.name}"


@pytest.mark.parametrize("page", _doc_files(), ids=lambda p: p.name)
def test_docs_links_resolve(page: Path) -> None:
    for target in _LINK_RE.findall(page.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue  # http:, https:, mailto:
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        assert dest.exists(), f"{page.name} links to missing {target}"
        if anchor and dest.suffix == ".md":
            headings = re.findall(r"^#+\s+(.+)$", dest.read_text(), re.MULTILINE)
            assert anchor in {_slug(h) for h in headings}, f"{page.name}: no heading for #{anchor}"


@pytest.mark.parametrize("page", _doc_files(), ids=lambda p: p.name)
def test_docs_name_only_real_settings_and_subcommands(page: Path) -> None:
    text = page.read_text()
    names = set(re.findall(r"\b(DICOMNODE_[A-Z0-9_]*[A-Z0-9])\b", text))
    names.discard(IMPLEMENTATION_VERSION_NAME)  # DICOMNODE_010, in docs/conformance.md
    assert unknown_settings(names) == [], f"{page.name} names settings that do not exist"
    used = set()
    for chunk in _CODE_RE.findall(text):
        lines = chunk.strip("`").splitlines()
        for line in lines[1:] if chunk.startswith("```") else lines:
            words = line.split()
            for i, w in enumerate(words[:-1]):
                # a `dicomnode` command word, not an argument such as `pg_dump -U dicomnode dicomnode`
                is_command = w.split("/")[-1] == "dicomnode" and (
                    i == 0 or not words[i - 1].startswith("-") and words[i - 1] != "dicomnode"
                )
                if is_command and not words[i + 1].startswith("-"):
                    used.add(words[i + 1].strip("`"))
    known = subcommands()
    assert used <= known, f"{page.name} names unknown subcommands {used - known}"
