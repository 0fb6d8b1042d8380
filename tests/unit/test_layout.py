"""Packages and rooms depend one way (STYLE.md, habit 2), and the service never loads torch.

The static check reads every import statement, lazy ones inside functions included, so a
dependency cannot hide from it; the process check imports the node and the worker for real.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: Each room of dicomnode/ and the rooms (and top-level modules) it may import. Data flows down:
#: storage <- net <- receive -> node; model -> results -> delivery; store beneath all SQL users;
#: ops reads what the others wrote; cli is the top and may import anything.
ALLOWED: dict[str, set[str]] = {
    "storage": set(),
    "net": {"storage"},
    "model": set(),
    "results": {"model"},
    "store": set(),
    "receive": {"net", "storage", "store", "config"},
    "delivery": {"net", "storage", "store", "results", "config"},
    "node": {"receive", "net", "storage", "store", "config", "dicomweb"},
    "dicomweb": {"receive", "net", "storage"},  # STOW-RS in: the C-STORE path behind HTTP
    "ops": {"store", "model", "results", "config"},
    "web": {"ops", "store", "results", "model", "delivery", "config", "net"},  # the page over them all
    "testing": {"net", "storage", "model", "results"},
    "config": {"model"},
    "logconfig": set(),
    "__init__": set(),
}
#: Top-level modules of dicomnode/ every room may use.
EVERYWHERE = {"__init__", "logconfig"}


def _imports(path: Path) -> set[str]:
    """Every module named by an import in ``path``, at any depth, as an absolute dotted name."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; the project uses absolute imports"
            assert node.module is not None
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _room(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "dicomnode" or len(parts) < 2:
        return "__init__" if parts == ["dicomnode"] else None
    return parts[1]


def _modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def test_dicomnode_rooms_import_only_the_rooms_beneath_them() -> None:
    wrong = []
    for path in _modules("dicomnode"):
        room = path.relative_to(REPO / "dicomnode").parts[0].removesuffix(".py")
        if room in ("cli", "__main__"):
            continue
        allowed = ALLOWED[room] | EVERYWHERE | {room}
        for name in _imports(path):
            target = _room(name)
            if name.split(".")[0] in ("worker", "training", "torch"):
                wrong.append(f"{path.relative_to(REPO)} imports {name}")
            elif target is not None and target not in allowed and target in ALLOWED | {"cli": set()}:
                wrong.append(f"{path.relative_to(REPO)} ({room}) imports {name} ({target})")
    assert wrong == []


def test_worker_never_imports_training_or_torch_and_cli_only_lazily() -> None:
    wrong = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in _modules("worker")
        for name in _imports(path)
        if name.split(".")[0] in ("training", "torch", "torchvision")
    ]
    # `dicomnode --help` and every command load dicomnode/cli/__init__.py: it names the worker
    # and training only inside the commands that need them
    for path in _modules("dicomnode/cli"):
        lazy_only = ("worker", "training", "torch") if path.name == "__init__.py" else ("training", "torch")
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                wrong += [
                    f"{path.relative_to(REPO)} imports {m} at module level"
                    for m in mods
                    if m.split(".")[0] in lazy_only
                ]
    assert wrong == []


#: What training may import from the service: the contract, the phantoms, the plots' font.
TRAINING_MAY_IMPORT = ("dicomnode.model", "dicomnode.testing.phantoms", "dicomnode.results.font")


def test_training_imports_only_the_model_contract_from_the_service() -> None:
    wrong = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in _modules("training")
        for name in _imports(path)
        if name.split(".")[0] in ("dicomnode", "worker")
        and not any(name == ok or name.startswith(ok + ".") for ok in TRAINING_MAY_IMPORT)
    ]
    assert wrong == []


@pytest.mark.process
def test_node_and_worker_load_neither_training_nor_torch() -> None:
    code = (
        "import sys\n"
        "import dicomnode.node, dicomnode.receive, dicomnode.net, dicomnode.delivery, dicomnode.ops\n"
        "import dicomnode.cli\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('worker', 'training', 'torch'))\n"
        "assert not bad, f'the node loaded {bad}'\n"
        "import worker.pipeline, worker.runners, worker.tasks\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('training', 'torch'))\n"
        "assert not bad, f'the worker loaded {bad}'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
