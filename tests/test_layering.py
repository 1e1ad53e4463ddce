"""Imports run downward: components/ and transforms/ never import pipelines/, and the ML Metadata
vocabulary is defined once.

TFX's anatomy puts the components (and their specs and config types) below the pipelines that wire
them. A component that reaches up into pipelines/ can only be reused with all of driftline, and a
vocabulary repeated in several modules drifts apart; both checks read the source with `ast`, so
an import inside a function counts as much as one at the top of a module.
"""
from __future__ import annotations

import ast
import pathlib
from typing import Dict, List, Tuple

ROOT = pathlib.Path(__file__).resolve().parents[1]
LOW_PACKAGES = ("components", "transforms")
SOURCE_PACKAGES = ("components", "transforms", "pipelines")
VOCABULARY = "components/mlmd_vocabulary.py"
PUBLISHED = {"LIVE", "MARKED_FOR_DELETION", "DELETED"}


def _modules(packages) -> Dict[str, ast.Module]:
    trees = {}
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            trees[str(path.relative_to(ROOT))] = ast.parse(path.read_text(), filename=str(path))
    return trees


def _imported_modules(tree: ast.Module) -> List[Tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))  # `from pipelines import x` gives "pipelines"
    return found


def test_components_and_transforms_never_import_pipelines():
    upward = [f"{path}:{line} imports {module}"
              for path, tree in _modules(LOW_PACKAGES).items()
              for line, module in _imported_modules(tree)
              if module == "pipelines" or module.startswith("pipelines.")]
    assert not upward, ("components/ and transforms/ must import only downward (move what they need below "
                        "them, e.g. into components/mlmd_vocabulary.py or the component's own module):\n"
                        + "\n".join(upward))


def _string_assignments(trees, value: str) -> List[str]:
    """Where a name is assigned exactly this string literal, anywhere in a module."""
    return [f"{path}:{node.lineno}" for path, tree in trees.items() for node in ast.walk(tree)
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Constant)
            and node.value.value == value]


def _published_tuples(trees) -> List[str]:
    """Where a tuple literal holds exactly Artifact.LIVE, MARKED_FOR_DELETION and DELETED."""
    found = []
    for path, tree in trees.items():
        aliases = {}  # _LIVE = metadata_store_pb2.Artifact.LIVE, ...
        for node in ast.walk(tree):
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Attribute)
                    and node.value.attr in PUBLISHED and isinstance(node.targets[0], ast.Name)):
                aliases[node.targets[0].id] = node.value.attr
        for node in ast.walk(tree):
            if isinstance(node, ast.Tuple):
                names = {e.attr if isinstance(e, ast.Attribute) else aliases.get(getattr(e, "id", None))
                         for e in node.elts}
                if names == PUBLISHED and len(node.elts) == 3:
                    found.append(f"{path}:{node.lineno}")
    return found


def test_the_mlmd_vocabulary_is_defined_once():
    trees = _modules(SOURCE_PACKAGES)
    for value in ("pipeline", "pipeline_run", "node"):
        places = _string_assignments(trees, value)
        assert len(places) == 1 and places[0].startswith(VOCABULARY + ":"), (
            f"the context type name {value!r} is defined at {places}: define it once in {VOCABULARY} "
            "and import it")
    places = _published_tuples(trees)
    assert len(places) == 1 and places[0].startswith(VOCABULARY + ":"), (
        f"the published artifact states are defined at {places}: define them once in {VOCABULARY} "
        "(PUBLISHED_STATES) and import them")


def test_the_checks_see_an_upward_import_inside_a_function():
    # The walk must reach imports nested in functions (resolvers.py once imported pipelines lazily).
    tree = ast.parse("def f():\n    from pipelines.recovery import untrained_spans\n")
    assert _imported_modules(tree) == [(2, "pipelines.recovery")]
