"""Every code block of README.md and docs/*.md runs as written, on generated data.

Each Markdown file's blocks run in order in a fresh folder holding a small generated project under
the names the docs use: ``dataset.xml`` (a sample as ``tilefuse sample`` writes it, whose channel
is "488") and ``registered.xml`` (the same, registered, with a bounding box named "cropped").
Shell blocks run with this checkout's ``tilefuse``.  The few blocks that cannot run on a test
machine by nature carry a ``<!-- docs-test: skip (why) -->`` marker; they are still parsed, and
``test_skipped_blocks_stay_few`` keeps them few.  The README's install block is checked piece by
piece in ``test_readme_install_block``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tilefuse
from docblocks import DocBlockError, blocks, check_parses, run_blocks, shell_env
from tilefuse.demo import make_sample_project
from tilefuse.project.model import BoundingBox

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]

#: Blocks that may be marked skip, over all the docs: a cluster, a scheduler address, installing
#: packages, minutes-long benchmarks.  Raise it only for a block that truly cannot run in a test.
MAX_SKIPPED = 6

#: The projects the blocks run on: small, so that all the docs run in well under a minute.
SAMPLE_2D = dict(ndim=2, grid=(2, 3), tile_shape=(128, 128), overlap=0.2)
#: docs/fusion.md shows "a 3D fusion script": it runs on a 3D (anisotropic) sample.
SAMPLES = {"fusion.md": dict(ndim=3, grid=(1, 2, 2), tile_shape=(24, 96, 96), overlap=0.25)}
#: Docs that make ``registered.xml`` themselves (the command line refuses to replace an existing output).
MAKE_REGISTERED = {"registration.md"}


def _prepare(folder: Path, sample: dict, registered_xml: bool = True) -> None:
    """Write ``dataset.xml`` and, unless the doc makes it, ``registered.xml`` (+ pixels) into ``folder``."""
    project = make_sample_project(folder, **sample)
    if not registered_xml:
        return
    registered = tilefuse.register(project).apply(project)
    # A <BoundingBoxDefinition> as BigStitcher users define them: the middle of the mosaic.
    boxes = [registered.world_box(v) for v in registered.views]
    lo = np.min([b.lo for b in boxes], axis=0)
    hi = np.max([b.hi for b in boxes], axis=0)
    quarter = (hi - lo) / 4
    registered.data.bounding_boxes = [BoundingBox("cropped", tuple(int(v) for v in np.ceil(lo + quarter)),
                                                  tuple(int(v) for v in np.floor(hi - quarter)))]
    registered.save(folder / "registered.xml")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return shell_env(tmp_path_factory.mktemp("bin"))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_code_blocks_run(doc, tmp_path, env):
    _prepare(tmp_path, SAMPLES.get(doc.name, SAMPLE_2D), registered_xml=doc.name not in MAKE_REGISTERED)
    run_blocks(doc, tmp_path, env)


def test_skipped_blocks_stay_few():
    skipped = [block for doc in DOCS for block in blocks(doc) if block.skip is not None]
    listing = "\n".join(f"  {b.where}: {b.skip}" for b in skipped)
    assert len(skipped) <= MAX_SKIPPED, f"more than {MAX_SKIPPED} doc blocks are not run:\n{listing}"
    for block in skipped:
        assert block.language, f"{block.where}: a skip marker on a block that is not code"
        check_parses(block)


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _dist(requirement: str) -> str:
    """The canonical distribution name of a requirement (``dask[array]>=2024.1`` -> ``dask``)."""
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_readme_install_block(tmp_path, env):
    """The README's first block installs, runs the demo and the tests: each piece that can run, runs."""
    install = blocks(README)[0]
    assert install.language == "bash" and install.skip is not None
    extras = _pyproject()["optional-dependencies"]
    ran = []
    for line in install.code.splitlines():
        for command in filter(None, (c.strip() for c in line.split("&&"))):
            words = shlex.split(command)
            if words[:2] == ["pip", "install"]:
                target = re.fullmatch(r"\.(?:\[(?P<extras>[\w,-]+)\])?", words[2])
                assert target and len(words) == 3, f"README installs something else: {command}"
                for extra in (target["extras"] or "").split(","):
                    assert not extra or extra in extras, f"README installs extra [{extra}], pyproject has none"
            elif words[:3] == ["python", "-m", "pytest"]:
                assert (ROOT / words[-1]).is_dir(), command  # this very test suite
            else:
                done = subprocess.run(["bash", "-e", "-c", command], cwd=tmp_path, env=env,
                                      capture_output=True, text=True, timeout=300)
                assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
                ran.append(command)
    assert ran == ["tilefuse demo demo_out"]
    # what the README says the demo writes
    for name in ("dataset.xml", "registered.xml", "fused.ome.zarr", "fused.png"):
        assert (tmp_path / "demo_out" / name).exists(), name


def test_core_dependencies_cover_every_import():
    """`pip install .` brings everything tilefuse imports, except the extras' plots and SimpleITK.

    distributed in particular: --workers, --scheduler and client= are in the README's first
    commands, so it is a core dependency (it was an extra, and `run --workers 2` failed).
    """
    project = _pyproject()
    core = {_dist(r) for r in project["dependencies"]}
    optional = {_dist(r) for extra in ("plot", "sitk") for r in project["optional-dependencies"][extra]}
    assert "distributed" in core
    by_module = importlib.metadata.packages_distributions()
    needed: dict[str, set[str]] = {}
    for path in sorted((ROOT / "src" / "tilefuse").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "tilefuse":
                    needed.setdefault(top, set()).add(path.name)
    assert "distributed" in needed  # the check sees lazy imports too
    for module, files in sorted(needed.items()):
        dists = {d.lower().replace("_", "-") for d in by_module.get(module, [module])}
        assert dists & (core | optional), f"{module} (imported in {sorted(files)}) is not a dependency"


# -- the runner itself: it must fail on a broken block, naming the file and line -----------------------


def _doc(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "doc.md"
    path.write_text(text)
    return path


def test_runner_runs_blocks_in_order_in_one_folder_and_namespace(tmp_path, env):
    doc = _doc(tmp_path, """Intro

```python
x = 41
open("made.txt", "w").write("ok")
```

```bash
test -f made.txt && tilefuse --version > version.txt
```

```python
assert x + 1 == 42
assert open("version.txt").read().startswith("tilefuse")
```

```
not code: never run
```
""")
    folder = tmp_path / "run"
    folder.mkdir()
    ran = run_blocks(doc, folder, env)
    assert [(b.language, b.line) for b in ran] == [("python", 3), ("bash", 8), ("python", 12)]


@pytest.mark.parametrize("text, message", [
    ("a\n\n```python\nx = 1\ny = 1 / 0\n```\n", r"doc\.md:3: the Python block failed: ZeroDivisionError"),
    ("```bash\ntrue\nfalse\necho never\n```\n", r"doc\.md:1: the shell block exited with status 1"),
    ("```sh\ntilefuse info missing.xml\n```\n", r"doc\.md:1: .*status 2.*missing\.xml"),
    ("```python\ndef f(:\n```\n", r"doc\.md:1: not valid Python"),
    ("<!-- docs-test: skip (needs a cluster) -->\n```bash\nif then fi\n```\n", r"doc\.md:2: not valid bash"),
    ("<!-- docs-test: skip -->\n```bash\ntrue\n```\n", r"doc\.md:1: unknown docs-test marker"),
    ("<!-- docs-test: skip (x) -->\ntext\n```bash\ntrue\n```\n", r"doc\.md:1: .*not directly before"),
    ("```python\nx = 1\n", r"doc\.md:1: code block never closed"),
])
def test_runner_fails_on_a_broken_block(tmp_path, env, text, message):
    with pytest.raises(DocBlockError, match=re.compile(message, re.S)):
        run_blocks(_doc(tmp_path, text), tmp_path, env)


def test_runner_skips_only_marked_blocks(tmp_path, env):
    doc = _doc(tmp_path, "<!-- docs-test: skip (needs a SLURM cluster) -->\n\n```bash\nexit 3\n```\n\n"
                         "```python\nran = True\n```\n")
    assert [b.line for b in run_blocks(doc, tmp_path, env)] == [7]
