"""The package's layout: one-way imports between its layers, config groups mapped onto code, short functions.

Imports are read from the source (every ``import`` statement, the lazy ones inside functions included), so a
cycle cannot hide behind a deferred import.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mer"

#: The layers, lowest first: a module may import its own layer and those below, never one above. Data flows
#: raw corpus -> sample table -> cache -> preprocessing's output -> training -> reports -> entry points.
LAYERS = (
    ("mer.errors", "mer.files", "mer.keys", "mer.processes", "mer.registry", "mer.version"),
    ("mer.data", "mer.synthetic", "mer.weights"),
    ("mer.cache", "mer.settings"),
    ("mer.preprocess", "mer.models"),
    ("mer.evaluation",),
    ("mer.training",),
    ("mer.predict",),
    ("mer", "mer.cli", "mer.report"),
)

#: Config group -> the code that its choices select (a package, or one module for groups whose choices are its
#: options). The README's "Layout" table says the same.
GROUP_CODE = {
    "dataset": "mer/data",
    "representation": "mer/preprocess/representation",
    "rois": "mer/preprocess/rois.py",
    "interpolation": "mer/preprocess/interpolation",
    "magnification": "mer/preprocess/magnification",
    "motion": "mer/preprocess/motion",
    "stabilize": "mer/preprocess/stabilize.py",
    "preprocess": "mer/preprocess",
    "model": "mer/models",
    "trainer": "mer/training/trainer.py",
    "logger": "mer/training/loggers.py",
    "callbacks": "mer/training/trainer.py",
}
#: Groups that select no code of mer's: folders, recipes (which set other groups), Hydra's own launchers.
NO_CODE_GROUPS = {"paths", "experiment", "hydra"}

#: The most lines (docstring excluded) a function may have, unless its docstring says why it is longer.
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py")) if "conf" not in path.parts}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The mer modules ``name`` imports (a ``from X import y`` of a submodule counts as importing it)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            candidates = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found.update(c for c in candidates if c in known and c != name)
    # Importing a submodule runs its parents' __init__ first: that edge is Python's, not the module's.
    return {m for m in found if not name.startswith(m + ".")}


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, set(known)) for name, path in known.items()}


def layer(name: str) -> int:
    best, depth = None, -1
    for index, names in enumerate(LAYERS):
        for prefix in names:
            if (name == prefix or name.startswith(prefix + ".")) and prefix.count(".") > depth:
                best, depth = index, prefix.count(".")
    assert best is not None, f"{name} belongs to no layer of tests/test_layout.py::LAYERS"
    return best


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle_through_a_lazy_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_mer_takes_part_in_an_import_cycle():
    assert cycles(import_graph()) == []


def test_no_module_imports_a_layer_above_its_own():
    upward = sorted(f"{name} (layer {layer(name)}) imports {other} (layer {layer(other)})"
                    for name, imported in import_graph().items() for other in imported if layer(other) > layer(name))
    assert upward == []


def test_every_config_group_maps_onto_code_of_its_name():
    groups = {path.name for path in (REPO / "conf").iterdir() if path.is_dir()}
    assert groups == set(GROUP_CODE) | NO_CODE_GROUPS
    missing = [f"{group}: {code}" for group, code in GROUP_CODE.items() if not (REPO / code).exists()]
    assert missing == []


@pytest.mark.parametrize("group, package", [("interpolation", "mer/preprocess/interpolation"),
                                            ("magnification", "mer/preprocess/magnification")])
def test_each_choice_of_a_pluggable_stage_is_the_module_of_its_name(group: str, package: str):
    choices = {OmegaConf.load(path).name for path in (REPO / "conf" / group).glob("*.yaml")}
    module_files = {path.stem for path in (REPO / package).glob("*.py") if not path.stem.startswith("_")}
    assert choices == module_files


def test_each_model_architecture_is_the_module_of_its_name():
    architectures = {OmegaConf.load(path).get("architecture") for path in (REPO / "conf" / "model").glob("*.yaml")}
    architectures.discard(None)  # the ablation variants take the paper's network through their defaults list
    module_files = {path.stem for path in (PACKAGE / "models").glob("*.py") if not path.stem.startswith("_")}
    assert architectures == module_files


def body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = node.body
    has_docstring = isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
        and isinstance(body[0].value.value, str)
    start = (body[1].lineno if len(body) > 1 else node.end_lineno + 1) if has_docstring else body[0].lineno
    return node.end_lineno - start + 1


def test_body_lines_skip_the_docstring():
    function = ast.parse('def f():\n    """Doc.\n\n    More.\n    """\n    a = 1\n    return a\n').body[0]
    assert body_lines(function) == 2


def test_no_function_is_longer_than_sixty_lines_unless_its_docstring_says_why():
    long = []
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and body_lines(node) > MAX_FUNCTION_LINES:
                if "Long because" not in (ast.get_docstring(node) or ""):
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({body_lines(node)} lines)")
    assert long == []
