"""Saves and overwrites that cannot lose data; unwritable and full output folders.

Every test builds its own damage: a file size limit (a real ``EFBIG``, as a full
disk gives ``ENOSPC``), a rename or write that fails part-way, a process killed
with SIGKILL while it writes, an output folder that cannot be written, an output
that is one of the inputs.  Tests run as root, for whom ``chmod`` blocks nothing,
so a read-only folder is simulated by making the OS calls fail with ``EROFS``.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import zarr

import tilefuse
from tilefuse.cli import main
from tilefuse.demo import make_sample_project
from tilefuse.errors import OutputError, TilefuseError
from tilefuse.pipeline import run
from tilefuse.project import open_project
from tilefuse.writers._atomic import OutputIsInputError, atomic_outputs

# Runs the CLI in a child process, optionally under a file size limit (writes past it fail
# with EFBIG, as they fail with ENOSPC on a full disk) or killed with SIGKILL once the
# fusion has computed `kill_at` blocks, i.e. part-way through writing its output.
CHILD = r"""
import itertools, os, resource, signal, sys
fsize, kill_at = int(sys.argv[1]), int(sys.argv[2])
if fsize:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an EFBIG error instead of death by signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, resource.RLIM_INFINITY))
if kill_at:
    import tilefuse.fusion.api as api
    to_dask, count = api.FusionPlan.to_dask, itertools.count(1)
    def hook(block):
        if block.size and next(count) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return block
    api.FusionPlan.to_dask = lambda self, *a, **k: to_dask(self, *a, **k).map_blocks(hook, dtype=self.dtype)
from tilefuse.cli import main
from tilefuse.demo import make_sample_project
sys.exit(main(sys.argv[3:]))
"""


def run_child(args, *, fsize: int = 0, kill_at: int = 0) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    src = str(Path(tilefuse.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-c", CHILD, str(fsize), str(kill_at), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=120)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("safe") / "sample"
    make_sample_project(out, ndim=2, grid=(2, 2), tile_shape=(128, 128), seed=3)
    return out


@pytest.fixture
def sample(sample_dir, tmp_path) -> Path:
    """A private copy of the sample project: ``<tmp>/d/dataset.xml`` + ``dataset.h5``."""
    shutil.copytree(sample_dir, tmp_path / "d")
    return tmp_path / "d" / "dataset.xml"


def _project_with_backups(sample: Path):
    """dataset.xml and ~1..~5, all different: six saves, each moving tile 0 a bit more."""
    project = open_project(sample)
    view = project.views[0]
    for i in range(6):
        project.preconcatenate(view, np.eye(4) + np.eye(4, k=3) * 0.5, f"step {i}")
        project.save()
    names = ["dataset.xml"] + [f"dataset.xml~{i}" for i in range(1, 6)]
    versions = [(sample.parent / n).read_bytes() for n in names]
    assert len(set(versions)) == 6
    return project, snapshot(sample.parent)


# -- Project.save -----------------------------------------------------------------------
def test_saves_rotate_backups_newest_first(sample):
    project = open_project(sample)
    history = [sample.read_bytes()]
    for i in range(7):
        project.preconcatenate(project.views[0], np.eye(4), f"step {i}")
        project.save()
        history.append(sample.read_bytes())
    assert sample.read_bytes() == history[-1]
    for i in range(1, 6):
        assert (sample.parent / f"dataset.xml~{i}").read_bytes() == history[-1 - i]
    assert sorted(p.name for p in sample.parent.iterdir() if "xml" in p.name) == \
        ["dataset.xml"] + [f"dataset.xml~{i}" for i in range(1, 6)], "no temporary file is left"


def test_failed_saves_on_a_full_disk_leave_the_file_and_every_backup(sample):
    _, before = _project_with_backups(sample)
    # Five saves in a row, each failing for real (EFBIG past a 1 kB file size limit).
    script = (
        "import numpy as np; from tilefuse.project import open_project\n"
        "from tilefuse.errors import OutputError\n"
        f"p = open_project({str(sample)!r})\n"
        "for i in range(5):\n"
        "    p.preconcatenate(p.views[0], np.eye(4), 'more')\n"
        "    try:\n"
        "        p.save()\n"
        "    except OutputError as exc:\n"
        "        print(exc)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(tilefuse.__file__).resolve().parents[1]))
    child = subprocess.run(
        [sys.executable, "-c", "import resource, signal\n"
         "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
         "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.RLIM_INFINITY))\n" + script],
        capture_output=True, text=True, env=env, timeout=60)
    assert child.returncode == 0, child.stderr
    messages = child.stdout.strip().splitlines()
    assert len(messages) == 5
    assert all(str(sample) in m and "file too large" in m and "nothing was changed" in m for m in messages)
    assert snapshot(sample.parent) == before, "file and backups byte-identical, no 0-byte ~1, no stray file"


@pytest.mark.parametrize("step", ["write", "rotate ~3", "rotate ~1", "final rename"])
def test_save_failing_at_any_step_changes_nothing(sample, monkeypatch, step):
    project, before = _project_with_backups(sample)
    project.preconcatenate(project.views[0], np.eye(4), "one more")
    if step == "write":
        def failing_write(*args, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(sample.parent))

        monkeypatch.setattr("tilefuse.project.project.write_spimdata", failing_write)
    else:
        real_replace = os.replace
        failed = []

        def failing_replace(src, dst):  # fails once; the undo renames then go through
            src, dst = Path(src), Path(dst)
            fails = {"rotate ~3": src.name == "dataset.xml~3",
                     "rotate ~1": dst.name == "dataset.xml~1",
                     "final rename": dst == sample}[step]
            if fails and not failed:
                failed.append(src)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
            return real_replace(src, dst)

        monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OutputError) as info:
        project.save()
    message = str(info.value)
    assert str(sample) in message and "nothing was changed" in message
    assert ("read-only file system" if step == "write" else "no space left on device") in message
    assert snapshot(sample.parent) == before


# -- preflight: unwritable output locations ------------------------------------------------
HEAVY = {  # the expensive step of each command, which must not run
    "register": "tilefuse.registration.api.register",
    "intensity": "tilefuse.intensity.match_intensities",
    "fuse": "tilefuse.fusion.api.plan_fusion",
    "run": "tilefuse.pipeline.register",
}


@pytest.mark.parametrize("how", ["parent is a file", "read-only folder"])
@pytest.mark.parametrize("command", sorted(HEAVY))
def test_unwritable_output_fails_before_any_work(sample, tmp_path, monkeypatch, capsys, command, how):
    calls = []
    monkeypatch.setattr(HEAVY[command], lambda *a, **k: calls.append(1))
    if how == "parent is a file":
        (tmp_path / "notafolder").write_text("x")
        folder = tmp_path / "notafolder" / "sub"
    else:
        folder = tmp_path / "readonly"
        folder.mkdir()
        real_mkstemp = tempfile.mkstemp

        def mkstemp(*args, dir=None, **kwargs):
            if dir is not None and Path(dir).resolve() == folder.resolve():
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
            return real_mkstemp(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    out = folder / ("out.xml" if command in ("register", "intensity") else "out.ome.zarr")
    argv = [command, str(sample), *(["-o", str(out)] if command in ("register", "intensity") else [str(out)]),
            "-q"]
    before = snapshot(sample.parent)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "stopped before any work" in err
    assert ("is a file, not a folder" if how == "parent is a file" else "read-only file system") in err
    assert len(err.strip().splitlines()) == 1
    assert calls == [], f"{command} computed before finding out it cannot write"
    assert snapshot(sample.parent) == before


def test_register_over_its_input_in_a_read_only_folder_fails_before_computing(sample, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(HEAVY["register"], lambda *a, **k: calls.append(1))

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert main(["register", str(sample), "-q"]) == 2
    assert "read-only file system" in capsys.readouterr().err and calls == []


# -- outputs that are inputs --------------------------------------------------------------
@pytest.mark.parametrize("case", ["fuse onto its XML", "fuse onto its container", "fuse into its container",
                                  "run onto its XML", "run into a folder holding it", "registered XML is it"])
def test_output_that_is_an_input_is_refused_and_the_input_untouched(sample, tmp_path, monkeypatch, case):
    d = sample.parent
    calls = []
    monkeypatch.setattr(HEAVY["run"], lambda *a, **k: calls.append(1))
    xml = sample
    if case == "fuse onto its XML":
        call = lambda: main(["fuse", str(xml), str(xml), "--overwrite", "-q"])  # noqa: E731
    elif case == "fuse onto its container":
        # input.xml reads dataset.h5; a project output dataset.xml would replace that container
        xml = d / "input.xml"
        shutil.copy(sample, xml)
        call = lambda: main(["fuse", str(xml), str(d / "dataset.xml"), "--overwrite", "-q"])  # noqa: E731
    elif case == "fuse into its container":
        call = lambda: main(["fuse", str(xml), str(d / "dataset.h5" / "f.ome.zarr"), "-q"])  # noqa: E731
    elif case == "run onto its XML":
        call = lambda: main(["run", str(xml), str(xml), "--overwrite", "-q"])  # noqa: E731
    elif case == "run into a folder holding it":
        inner = tmp_path / "p.ome.zarr"
        shutil.move(d, inner)
        d, xml = inner, inner / "dataset.xml"
        call = lambda: main(["run", str(xml), str(inner), "--overwrite", "-q"])  # noqa: E731
    else:
        call = lambda: run(xml, tmp_path / "o.ome.zarr", registered_xml=xml)  # noqa: E731
    before = snapshot(d)
    if case == "registered XML is it":
        with pytest.raises(OutputIsInputError, match="is an input"):
            call()
    else:
        assert call() == 2
    assert snapshot(d) == before, "input XML and container byte-identical, nothing added"
    assert calls == []


def test_output_error_message_names_both_paths(sample, capsys):
    out = sample.parent / "dataset.h5" / "f.ome.zarr"
    assert main(["fuse", str(sample), str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and str(sample.parent / "dataset.h5") + ")" in err
    assert "lies inside an input container" in err and len(err.strip().splitlines()) == 1


# -- --overwrite killed part-way -----------------------------------------------------------
@pytest.mark.parametrize("name", ["fused.ome.zarr", "fused.xml"])
def test_overwrite_killed_part_way_leaves_the_old_output_intact(sample, tmp_path, name):
    out = tmp_path / "o" / name
    project = open_project(sample)
    tilefuse.write_fused(tilefuse.plan_fusion(project, downsampling=2), out)
    old_files = snapshot(out.parent)
    old_pixels = _read_output(out)

    child = run_child(["fuse", sample, out, "--overwrite", "--chunks", "1,32,32", "-q"], kill_at=12)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert any(p.name.endswith((".partial", ".tmp")) for p in out.parent.iterdir()), "killed mid-write"
    assert {k: v for k, v in snapshot(out.parent).items() if k in old_files} == old_files
    np.testing.assert_array_equal(_read_output(out), old_pixels)

    # The same command, not killed, replaces it and leaves nothing temporary behind.
    tilefuse.write_fused(tilefuse.plan_fusion(project, chunks=(32, 32)), out, overwrite=True)
    assert _read_output(out).shape != old_pixels.shape, "the new output (no downsampling) is in place"
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(
        [name] if name.endswith(".zarr") else [name, "fused.h5"])


def _read_output(out: Path) -> np.ndarray:
    if out.suffix == ".xml":
        project = open_project(out)
        return project.image(project.views[0]).compute()
    return zarr.open_group(str(out), mode="r")["0"][...]


def test_failed_final_swap_is_undone(tmp_path, monkeypatch):
    """A rename failing half-way through replacing XML + container restores the old pair."""
    container, xml = tmp_path / "p.h5", tmp_path / "p.xml"
    container.write_text("old pixels")
    xml.write_text("old xml")
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(src).name == "p.xml.partial":  # the very last rename
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OutputError, match="permission denied"):
        with atomic_outputs([container, xml], overwrite=True) as (tmp_c, tmp_x):
            tmp_c.write_text("new pixels")
            tmp_x.write_text("new xml")
    assert container.read_text() == "old pixels" and xml.read_text() == "old xml"
    assert not (tmp_path / "p.h5.replaced").exists() and not (tmp_path / "p.xml.replaced").exists()


# -- full disk while writing pixels ----------------------------------------------------------
@pytest.mark.parametrize("name, extra, kept", [
    ("fused.tif", [], "removed the incomplete output"),
    ("fused.ome.zarr", ["--chunks", "1,64,64"], "resumes from it"),
    ("fused.xml", ["--container", "n5", "--chunks", "1,64,64"], "removed the incomplete output"),
])
def test_full_disk_while_writing_is_one_clear_error_and_keeps_the_old_output(sample, tmp_path, name, extra,
                                                                              kept):
    out = tmp_path / "o" / name
    project = open_project(sample)
    container = "n5" if "n5" in extra else "hdf5"
    tilefuse.write_fused(tilefuse.plan_fusion(project, downsampling=4), out, container=container)
    old_files = snapshot(out.parent)

    child = run_child(["fuse", sample, out, "--overwrite", *extra, "-q"], fsize=1500)
    assert child.returncode == 2, child.stderr
    err = child.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert str(out) in err and "cannot write" in err and kept in err
    assert "file too large" in err or "full disk" in err
    assert {k: v for k, v in snapshot(out.parent).items() if k in old_files} == old_files
    leftovers = {p.name for p in out.parent.iterdir()} - {Path(k).parts[0] for k in old_files}
    assert leftovers == ({f"{name}.partial"} if "resumes" in kept else set())


def test_write_error_on_an_input_is_not_blamed_on_the_output(tmp_path):
    """Permission errors name the output only when the failing file is one of its files."""
    out = tmp_path / "o.tif"
    with pytest.raises(PermissionError):
        with atomic_outputs([out]):
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "input.h5"))
    with pytest.raises(OutputError, match="permission denied"):
        with atomic_outputs([out]) as (tmp,):
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp))


def test_output_errors_are_tilefuse_and_os_errors():
    assert issubclass(OutputError, TilefuseError) and issubclass(OutputError, OSError)
    assert issubclass(OutputIsInputError, TilefuseError) and issubclass(OutputIsInputError, ValueError)
