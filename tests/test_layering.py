"""Dependencies run one way: no module of tilefuse imports a layer above its own.

The layers, bottom to top (the developers' guide's Layout rule; README "Layout" has the same table):

==  ==========================  =================================================================
 0  core                        the package root (eagerly: errors, _version), errors, _version,
                                _options, _numeric, _text, _progress, _compute, _timing,
                                _inputs (reading damaged files safely), _blockcache (decoded blocks),
                                _outputs (atomic-output primitives), downsample, geometry/*
 1  project model and XML       project/* (ids, paths, model, xml_read, xml_write, checks,
                                timepoints, Project, summary)
 2  formats                     formats/* (N5 blocks and attributes, deflate, BDV layout)
 3  loaders                     loaders/*
 4  opening a project           opening (open_project: the XML read, its loader built)
 5  registration                registration/*, interestpoints/* (detection, matching, solve)
 6  fusion                      fusion/*
 7  intensity                   intensity (it renders overlaps with fusion)
 8  writers                     writers/*
 9  applications                sample_data, sample_periodic, demo, convert, plotting, pipeline
10  command line                cli, _cliargs
==  ==========================  =================================================================

The view ids and path helpers (project/views.py, project/paths.py) import only core, but
importing them runs project/__init__.py, so they count as layer 1 (the loaders, above, use them).

A module may import its own layer and any layer below.  Every ``import`` statement counts, at
module level and inside functions, absolute and relative.  Importing ``tilefuse.a.b`` runs
``tilefuse/a/__init__.py`` first, so it counts as importing the package ``tilefuse.a`` too
(each package ``__init__`` belongs to its package's layer).  The root ``tilefuse/__init__.py``
imports only core eagerly; its other public names load lazily (PEP 562) on first use, so
``from tilefuse import open_project`` inside the package counts as importing the module the
name lives in.  Dynamic imports (``importlib.import_module`` of a computed name) are not seen.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

import tilefuse

SRC = Path(tilefuse.__file__).resolve().parent
ROOT = "tilefuse"

#: (layer, name, module patterns), bottom to top; a package's pattern ``pkg*`` covers its __init__ and modules.
LAYERS = [
    (0, "core", ["tilefuse", "tilefuse.errors", "tilefuse._version", "tilefuse._options", "tilefuse._numeric",
                 "tilefuse._text", "tilefuse._progress", "tilefuse._compute", "tilefuse._timing", "tilefuse._inputs",
                 "tilefuse._blockcache", "tilefuse._outputs", "tilefuse.downsample", "tilefuse.geometry*"]),
    (1, "project model and XML", ["tilefuse.project*"]),
    (2, "formats", ["tilefuse.formats*"]),
    (3, "loaders", ["tilefuse.loaders*"]),
    (4, "opening a project", ["tilefuse.opening"]),
    (5, "registration", ["tilefuse.registration*", "tilefuse.interestpoints*"]),
    (6, "fusion", ["tilefuse.fusion*"]),
    (7, "intensity", ["tilefuse.intensity"]),
    (8, "writers", ["tilefuse.writers*"]),
    (9, "applications", ["tilefuse.sample_data", "tilefuse.sample_periodic", "tilefuse.demo", "tilefuse.convert*",
                         "tilefuse.plotting", "tilefuse.pipeline"]),
    (10, "command line", ["tilefuse.cli", "tilefuse._cliargs"]),
]


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = [ROOT, *path.relative_to(SRC).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def layer_of(module: str) -> int:
    """The layer of a module; a module no pattern covers is an error (give every new module a layer)."""
    for layer, _, patterns in LAYERS:
        for pattern in patterns:
            if module == pattern or (pattern.endswith("*") and
                                     (module == pattern[:-1] or fnmatch.fnmatch(module, pattern[:-1] + ".*"))):
                return layer
    raise KeyError(module)


def _lazy_names() -> dict[str, str]:
    """The root package's lazily loaded public names -> the module each lives in."""
    tree = ast.parse(MODULES[ROOT].read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in targets):
                table = ast.literal_eval(node.value)
                return {name: f"{ROOT}.{module}" for name, module in table.items()}
    return {}


LAZY = _lazy_names()


def _with_parents(module: str) -> list[str]:
    """``module`` and the packages whose ``__init__`` importing it runs (the root excepted: see the docstring)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts) + 1)]


def _resolve(package: str, name: str) -> str:
    """What ``from package import name`` loads: a submodule, a lazy public name's module, or the package."""
    if f"{package}.{name}" in MODULES:
        return f"{package}.{name}"
    if package == ROOT and name in LAZY:
        return LAZY[name]
    return package


def imports_of(module: str) -> list[tuple[int, str]]:
    """Every tilefuse module that ``module`` imports, as ``(line, module)``, parents included."""
    path = MODULES[module]
    here = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - (node.level - 1)]
                package = ".".join(base + ([node.module] if node.module else []))
            else:
                package = node.module or ""
            targets = [_resolve(package, alias.name) for alias in node.names]
        for target in targets:
            if target == ROOT or target.startswith(ROOT + "."):
                found += [(node.lineno, t) for t in _with_parents(target) if t != module]
    return sorted(set(found))


def violations() -> list[str]:
    out = []
    for module in MODULES:
        mine = layer_of(module)
        for line, target in imports_of(module):
            if target not in MODULES:
                out.append(f"{module}:{line} imports {target}, which is not a module of tilefuse")
                continue
            theirs = layer_of(target)
            if theirs > mine:
                out.append(f"{module} (layer {mine}) line {line} imports {target} (layer {theirs})")
    return out


def test_every_module_has_a_layer():
    unplaced = []
    for module in MODULES:
        try:
            layer_of(module)
        except KeyError:
            unplaced.append(module)
    assert not unplaced, f"give these modules a layer in LAYERS (and README's Layout): {unplaced}"


def test_every_lazy_public_name_exists():
    assert LAZY, "tilefuse/__init__.py has no _LAZY table"
    missing = {name: module for name, module in LAZY.items() if module not in MODULES}
    assert not missing


def test_no_module_imports_a_layer_above_its_own():
    found = violations()
    assert not found, "imports that run upward:\n" + "\n".join(found)


def test_root_package_imports_only_core_eagerly():
    """Importing any module runs tilefuse/__init__.py: it must not pull anything above core."""
    assert {layer_of(t) for _, t in imports_of(ROOT)} <= {0}


# -- the checker itself -------------------------------------------------------------------
@pytest.mark.parametrize(("module", "source", "expected"), [
    ("tilefuse.project.model", "from ..loaders import loader_from_xml", "tilefuse.loaders"),
    ("tilefuse.project.model", "def f():\n    from ..writers._atomic import rename_all", "tilefuse.writers._atomic"),
    ("tilefuse.errors", "import tilefuse.fusion.api", "tilefuse.fusion.api"),
    ("tilefuse.errors", "from tilefuse import plan_fusion", "tilefuse.fusion.api"),
    ("tilefuse.geometry.boxes", "from ..project.views import ViewId", "tilefuse.project"),
    ("tilefuse.loaders", "from . import _n5", None),
])
def test_checker_sees_upward_imports(module, source, expected, monkeypatch, tmp_path):
    """The checker finds upward imports in every spelling (so the test above can fail)."""
    fake = tmp_path / "m.py"
    fake.write_text(source + "\n")
    is_package = MODULES[module].name == "__init__.py"
    if is_package:
        fake = tmp_path / "__init__.py"
        fake.write_text(source + "\n")
    monkeypatch.setitem(MODULES, module, fake)
    mine = layer_of(module)
    upward = [t for _, t in imports_of(module) if layer_of(t) > mine]
    if expected is None:
        assert upward == []
    else:
        assert expected in upward
