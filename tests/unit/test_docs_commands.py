"""Command examples in the docs run the real command-line parsers.

Every ``dicomnode ...`` line in a fenced shell block of docs/*.md and README.md (directly, after
``docker compose exec|run SERVICE``, or as the arguments of a ``docker run`` of one of our images,
whose entrypoint is ``dicomnode``) must parse with :func:`dicomnode.cli.build_parser`, and
``dicomnode train ...`` with the training parser it forwards to; so must every ``ExecStart`` of the
systemd units in docker/systemd/. Image tags in the docs are the ones compose builds, and
docs/scale-out.md's worker.env carries every setting the node host's containers share.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from dicomnode.cli import build_parser
from tests.unit.test_docker import env_example, raw_compose, service_env

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
SYSTEMD = REPO / "docker" / "systemd"
PAGES = [*sorted(DOCS.glob("*.md")), REPO / "README.md"]

#: fenced blocks whose lines are shell commands
_FENCE_RE = re.compile(r"^[ \t]*```(?:sh|bash|console|shell)\n(.*?)^[ \t]*```", re.DOTALL | re.MULTILINE)
#: images built from docker/ whose entrypoint is ``dicomnode``
_OUR_IMAGE_RE = re.compile(r"^dicomnode-(?:node|worker-gpu)(?::(?P<tag>\S+))?$")
_ANY_OUR_IMAGE_RE = re.compile(r"\bdicomnode-(?:node|worker-gpu|flower)\b(?![-\w])(?::(?P<tag>[\w.${}:-]+))?")
_ASSIGNMENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
#: compose services whose image's entrypoint is ``dicomnode`` (flower's is celery)
_ENTRYPOINT_DICOMNODE = {"migrate", "node", "worker", "worker-cpu"}
#: `docker compose exec|run` options that take a value
_COMPOSE_VALUE_OPTIONS = {
    "-e",
    "--env",
    "-u",
    "--user",
    "-w",
    "--workdir",
    "--entrypoint",
    "--name",
    "-v",
    "--volume",
    "-p",
    "--publish",
    "-l",
    "--label",
    "--index",
}


@dataclass(frozen=True)
class Example:
    page: str
    line: str
    argv: list[str]  # the arguments after `dicomnode`

    def __str__(self) -> str:
        return f"{self.page}: {self.line}"


def shell_lines(text: str) -> list[str]:
    """The logical lines of the fenced shell blocks of ``text`` (continuations joined)."""
    out = []
    for block in _FENCE_RE.findall(text):
        buf = ""
        for raw in block.splitlines():
            if raw.rstrip().endswith("\\"):
                buf += raw.rstrip()[:-1] + " "
                continue
            out.append((buf + raw).strip())
            buf = ""
    return [line for line in out if line and not line.startswith("#")]


def commands_of(line: str) -> list[list[str]]:
    """The simple commands of one shell line: split at ``&&``, ``||``, ``;``, ``&`` and ``|``,
    comments dropped, quotes removed."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token and set(token) <= set(";&|"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def _words(command: list[str]) -> list[str]:
    """A simple command without ``VAR=value`` assignments and ``sudo [-u USER]`` in front."""
    words = list(command)
    while True:
        if words and _ASSIGNMENT_RE.match(words[0]):
            words = words[1:]
        elif words[:2] == ["sudo", "-u"]:
            words = words[3:]
        elif words[:1] == ["sudo"]:
            words = words[1:]
        else:
            return words


def dicomnode_argv(command: list[str]) -> list[str] | None:
    """The arguments of ``dicomnode`` that ``command`` runs, or None when it runs something else."""
    words = _words(command)
    if not words:
        return None
    if words[0].split("/")[-1] == "dicomnode":
        return words[1:]
    if words[:2] == ["docker", "compose"] and len(words) > 2 and words[2] in ("exec", "run"):
        # docker compose exec|run [OPTIONS] SERVICE dicomnode ...
        i = 3
        while i < len(words) and words[i].startswith("-"):
            i += 2 if words[i] in _COMPOSE_VALUE_OPTIONS else 1
        if words[i + 1 : i + 2] == ["dicomnode"]:
            return words[i + 2 :]
        run_options = words[3:i]
        if (
            words[2] == "run"
            and "--entrypoint" not in run_options
            and words[i : i + 1]
            and (words[i] in _ENTRYPOINT_DICOMNODE)
        ):
            # the image's entrypoint is dicomnode: the rest are its arguments; none: the service's
            # own command (tests/unit/test_docker.py checks those)
            return words[i + 1 :] or None
        return None
    if words[:2] == ["docker", "run"]:
        for i, w in enumerate(words[2:], start=2):
            if _OUR_IMAGE_RE.match(w) and not words[i - 1].startswith("--"):
                return words[i + 1 :]
    return None


def examples() -> list[Example]:
    out = []
    for page in PAGES:
        for line in shell_lines(page.read_text()):
            try:
                commands = commands_of(line)
            except ValueError as exc:  # an unbalanced quote is a broken example too
                pytest.fail(f"{page.name}: cannot split {line!r}: {exc}")
            for command in commands:
                argv = dicomnode_argv(command)
                if argv is not None:
                    out.append(Example(page.name, line, argv))
    return out


def parse(argv: list[str], where: str) -> None:
    """Parse with the real parser; `train ...` with the training CLI's parser, as main() does."""
    if argv[:1] == ["train"]:
        from training.__main__ import COMMANDS
        from training.__main__ import build_parser as training_parser

        rest = argv[1:]
        if not rest or rest[0] not in COMMANDS:
            rest = ["train", *rest]
        parser = training_parser()
        args = rest
    else:
        parser, args = build_parser(), argv
    try:
        parser.parse_args(args)
    except SystemExit:
        pytest.fail(f"{where}: `dicomnode {shlex.join(argv)}` does not parse")


EXAMPLES = examples()


def test_the_docs_have_command_examples_to_check() -> None:
    pages = {e.page for e in EXAMPLES}
    assert len(EXAMPLES) >= 25, [str(e) for e in EXAMPLES]
    assert {"README.md", "deploy-docker.md", "pacs-integration.md", "operations.md"} <= pages


@pytest.mark.parametrize("example", EXAMPLES, ids=str)
def test_command_example_parses(example: Example) -> None:
    parse(example.argv, str(example))


def test_extraction_finds_commands_in_every_form() -> None:
    """The extractor itself, on the forms the docs use (so a miss cannot pass silently)."""
    block = "\n".join(
        [
            "```sh",
            "docker compose exec -T node dicomnode audit --since 7d   # comment",
            "docker compose exec postgres pg_dump -U dicomnode dicomnode > x.sql",
            ".venv/bin/dicomnode results | head",
            "sudo -u dicomnode DICOMNODE_STORAGE_DIR=/srv/x dicomnode migrate",
            "DICOMNODE_STORAGE_DIR=/srv/x dicomnode echo \\",
            "  --port 104",
            "docker run -d --name w --gpus all dicomnode-worker-gpu:local worker --concurrency 1",
            "docker compose run --rm migrate migrate --downgrade 0003",
            "docker compose run --rm --no-deps --entrypoint python worker -c 'import dicomnode'",
            "```",
        ]
    )
    found = [
        argv
        for line in shell_lines(block)
        for command in commands_of(line)
        if (argv := dicomnode_argv(command)) is not None
    ]
    assert found == [
        ["audit", "--since", "7d"],
        ["results"],
        ["migrate"],
        ["echo", "--port", "104"],
        ["worker", "--concurrency", "1"],
        ["migrate", "--downgrade", "0003"],
    ]


# --------------------------------------------------------------------------- systemd units


def unit_files() -> list[Path]:
    return sorted(SYSTEMD.glob("*.service"))


def test_systemd_units_exist() -> None:
    assert {p.name for p in unit_files()} >= {"dicomnode.service", "dicomnode-worker@.service"}


@pytest.mark.parametrize("unit", unit_files(), ids=lambda p: p.name)
def test_systemd_unit_runs_a_real_command_as_a_non_root_user(unit: Path) -> None:
    text = unit.read_text()
    keys: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line.strip())
        if m:
            keys.setdefault(m.group(1), []).append(m.group(2))
    user = keys.get("User", ["root"])[-1]
    assert user not in ("root", "0"), f"{unit.name} runs as root"
    (exec_start,) = keys["ExecStart"]
    # systemd specifiers (%i, %H) and %% for a literal %; the argv is what systemd would run
    words = shlex.split(exec_start.replace("%%", "%"))
    assert words[0].startswith("/") and words[0].split("/")[-1] == "dicomnode", exec_start
    parse(words[1:], unit.name)
    if unit.name.startswith("dicomnode-worker@"):
        # one host runs several instances: each needs its own Celery node name
        assert "--hostname" in words and "%i" in words[words.index("--hostname") + 1], exec_start


# --------------------------------------------------------------------------- images and worker.env


def test_docs_name_our_images_with_the_tag_compose_builds() -> None:
    tag = env_example()["IMAGE_TAG"]
    for page in PAGES:
        for line in shell_lines(page.read_text()) + re.findall(r"`([^`\n]+)`", page.read_text()):
            for m in _ANY_OUR_IMAGE_RE.finditer(line):
                if "docker build" in line or "docker save" in line or "docker run" in line:
                    assert m.group("tag") == tag, f"{page.name}: {line!r} should use :{tag}"


def test_scale_out_worker_env_has_every_shared_setting() -> None:
    """The node host's containers share x-dicomnode-env; a worker on another machine needs the same."""
    text = (DOCS / "scale-out.md").read_text()
    block = next(b for b in _FENCE_RE.findall(text) if "DICOMNODE_BROKER_URL=redis://" in b)
    worker_env = {line.split("=", 1)[0] for line in block.splitlines() if "=" in line}
    shared = set(service_env({"environment": raw_compose()["x-dicomnode-env"]}))
    missing = sorted(shared - worker_env)
    assert missing == [], f"docs/scale-out.md worker.env lacks {missing}"


def test_deploy_guide_installs_the_demo_model_under_the_name_the_demo_writes() -> None:
    """`make demo` writes Settings().model_path (storage_dir/models/pneumonia-demo.onnx); the guide
    copies that file into docker/models/ and points DICOMNODE_MODEL at /models/<that name>."""
    from dicomnode.config import Settings

    demo = Settings().model_path
    text = (DOCS / "deploy-docker.md").read_text()
    assert f"`{demo.as_posix()}`" in text, "the guide names where `make demo` writes the model"
    assert f"cp ../{demo.as_posix()} models/" in text
    assert f"DICOMNODE_MODEL=/models/{demo.name}" in text


def test_worker_containers_in_the_docs_get_distinct_celery_names() -> None:
    """Two workers with one Celery name on a broker are taken for one (and the image's health check
    pings celery@$HOSTNAME): each documented `docker run` of a worker sets its own --hostname."""
    for page in PAGES:
        names = []
        for line in shell_lines(page.read_text()):
            for command in commands_of(line):
                argv = dicomnode_argv(command)
                if command[:2] != ["docker", "run"] or not argv or argv[0] != "worker":
                    continue
                options = command[: len(command) - len(argv)]
                assert "--hostname" in options or "--hostname" in argv, f"{page.name}: {line}"
                where = options if "--hostname" in options else argv
                names.append(where[where.index("--hostname") + 1])
        assert len(names) == len(set(names)), f"{page.name}: workers share a name: {names}"
