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
import tifffile
import zarr

import tilefuse
from tilefuse import open_project
from tilefuse.cli import main
from tilefuse.demo import make_sample_project
from tilefuse.errors import OutputError, OutputIsInputError, TilefuseError
from tilefuse.pipeline import run
from tilefuse.writers._atomic import atomic_outputs

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
        "import numpy as np; from tilefuse import open_project\n"
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
    # A kept partial output carries tilefuse's marker (so only tilefuse ever deletes it); no lock is left.
    assert leftovers == ({f"{name}.partial", f"{name}.partial.tilefuse"} if "resumes" in kept else set())


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


# -- every output of every command: one check before any work ----------------------------------
def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err and "internal error" not in err, err
    return err


@pytest.mark.parametrize("case", ["fuse: preview is the output", "fuse: preview inside the output",
                                  "fuse: preview is the output's partial", "fuse: preview is the project container",
                                  "run: preview is the registered XML", "register: plot is the registered XML",
                                  "register: plot is the input XML", "info: plot is an input tile"])
def test_outputs_that_clash_with_each_other_or_an_input_are_refused_before_any_work(
        sample, tmp_path, monkeypatch, capsys, case):
    d = sample.parent
    calls = []
    for heavy in HEAVY.values():
        monkeypatch.setattr(heavy, lambda *a, **k: calls.append(1))
    xml, o = str(sample), tmp_path / "o"
    command, rest = case.split(": ")
    argv = {
        "fuse: preview is the output": ["fuse", xml, o / "f.tif", "--preview", o / "f.tif"],
        "fuse: preview inside the output": ["fuse", xml, o / "f.ome.zarr", "--preview", o / "f.ome.zarr" / "p.png"],
        "fuse: preview is the output's partial": ["fuse", xml, o / "f.tif", "--preview", o / "f.tif.partial"],
        "fuse: preview is the project container": ["fuse", xml, o / "f.xml", "--preview", o / "f.n5",
                                                   "--container", "n5"],
        "run: preview is the registered XML": ["run", xml, o / "out.ome.zarr", "--preview",
                                               o / "out.registered.xml"],
        "register: plot is the registered XML": ["register", xml, "-o", o / "r.xml", "--plot", o / "r.xml"],
        "register: plot is the input XML": ["register", xml, "--plot", xml],
        "info: plot is an input tile": None,
    }[case]
    if argv is None:  # a TIFF project: every tile file is an input
        d = tmp_path / "t"
        make_sample_project(d, grid=(1, 2), tile_shape=(32, 32), format="tiff")
        argv = ["info", d / "dataset.xml", "--plot", d / "dataset_tiff" / "t0_s1.tif", "--overwrite"]
    before = snapshot(d)
    assert main([*map(str, argv), "-q"]) == 2
    err = _one_line_error(capsys)
    assert "another output of this run" in err or "is an input of this run" in err
    assert calls == [] and snapshot(d) == before and not o.exists(), "nothing computed, written or created"


OLD = b"an existing file the user keeps"


@pytest.mark.parametrize("case", ["fuse --preview", "fuse --preview onto truth.json", "run --preview",
                                  "run: registered XML", "run: output of a registered run", "info --plot",
                                  "register --plot", "register -o", "intensity -o", "sample", "convert"])
def test_existing_outputs_are_refused_before_any_work_unless_overwrite(sample, tmp_path, monkeypatch, capsys,
                                                                       case):
    d, xml, o = sample.parent, str(sample), tmp_path / "o"
    o.mkdir()
    existing = {"fuse --preview": o / "keep.png", "fuse --preview onto truth.json": d / "truth.json",
                "run --preview": o / "keep.png", "run: registered XML": o / "out.registered.xml",
                "run: output of a registered run": o / "out.xml", "info --plot": o / "keep.png",
                "register --plot": o / "keep.png", "register -o": o / "r.xml", "intensity -o": o / "r.xml",
                "sample": o / "truth.json", "convert": o / "p.h5"}[case]
    existing.write_bytes(OLD)
    argv = {"fuse --preview": ["fuse", xml, o / "f.ome.zarr", "--preview", existing],
            "fuse --preview onto truth.json": ["fuse", xml, o / "f.ome.zarr", "--preview", existing],
            "run --preview": ["run", xml, o / "out.ome.zarr", "--preview", existing],
            "run: registered XML": ["run", xml, o / "out.ome.zarr"],
            "run: output of a registered run": ["run", xml, o / "out.xml"],
            "info --plot": ["info", xml, "--plot", existing],
            "register --plot": ["register", xml, "-o", o / "r.xml", "--plot", existing],
            "register -o": ["register", xml, "-o", existing],
            "intensity -o": ["intensity", xml, "-o", existing],
            "sample": ["sample", o, "--grid", "1,2", "--tile", "32,32"],
            "convert": ["convert", d, o / "pos.csv", "-o", o / "p.xml"]}[case]
    (o / "pos.csv").write_text("file,x,y\ndataset.xml,0,0\n")  # never read: refused before
    calls = []
    for heavy in [*HEAVY.values(), "tilefuse.plotting.plot_layout", "tilefuse.demo.make_mosaic",
                  "tilefuse.convert.read_positions"]:
        monkeypatch.setattr(heavy, lambda *a, **k: calls.append(1))
    before_input, before_out = snapshot(d), snapshot(o)
    assert main([*map(str, argv), "-q"]) == 2
    err = _one_line_error(capsys)
    assert str(existing) in err and "already exists" in err and "--overwrite" in err
    assert calls == [], "refused before any work"
    assert snapshot(d) == before_input and snapshot(o) == before_out


@pytest.mark.parametrize("command", ["fuse", "run", "info", "register"])
def test_overwrite_replaces_pictures_through_a_temporary_name(sample, tmp_path, capsys, command):
    keep = tmp_path / "keep.png"
    keep.write_bytes(OLD)
    flag = "--plot" if command in ("info", "register") else "--preview"
    argv = {"fuse": ["fuse", sample, tmp_path / "f.ome.zarr"], "run": ["run", sample, tmp_path / "r.ome.zarr"],
            "info": ["info", sample], "register": ["register", sample, "-o", tmp_path / "r.xml"]}[command]
    assert main([*map(str, argv), flag, str(keep), "--overwrite", "-q"]) == 0
    assert keep.read_bytes().startswith(b"\x89PNG"), "the picture replaced the old file"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("keep")) == ["keep.png"]


def test_a_picture_that_fails_to_write_leaves_the_old_file(sample, tmp_path, monkeypatch, capsys):
    import imageio.v3

    def half_then_full_disk(uri, *args, **kwargs):
        Path(uri).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(uri))

    monkeypatch.setattr(imageio.v3, "imwrite", half_then_full_disk)
    o = tmp_path / "o"
    o.mkdir()
    keep = o / "keep.png"
    keep.write_bytes(OLD)
    assert main(["fuse", str(sample), str(o / "f.tif"), "--preview", str(keep), "--overwrite", "-q"]) == 2
    err = _one_line_error(capsys)
    assert str(keep) in err and "no space left on device" in err
    assert keep.read_bytes() == OLD
    assert sorted(p.name for p in o.iterdir()) == ["f.tif", "keep.png"], "no partial, marker or lock left"


# -- tilefuse demo ---------------------------------------------------------------------------------
def test_demo_refuses_an_existing_project_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "demo_out"  # a fresh folder, as in the README
    small = ["--grid", "2,2", "--tile", "96,96", "-q"]
    assert main(["demo", str(out), *small]) == 0
    names = {"dataset.xml", "dataset.h5", "truth.json", "registered.xml", "fused.ome.zarr", "fused.png"}
    assert {p.name for p in out.iterdir()} == names
    before = snapshot(out)
    assert main(["demo", str(out), *small, "--seed", "1"]) == 2
    err = _one_line_error(capsys)
    assert str(out / "dataset.xml") in err and "already exists" in err and "--overwrite" in err
    assert snapshot(out) == before, "the first demo is untouched"
    assert main(["demo", str(out), *small, "--seed", "1", "--overwrite"]) == 0
    assert (out / "dataset.h5").read_bytes() != before["dataset.h5"], "replaced by the seed-1 sample"
    assert {p.name for p in out.iterdir()} == names | {"registered.xml~1"}


# -- tilefuse run: every output checked before registering ------------------------------------------
def test_run_checks_the_fused_output_before_registering_and_keeps_the_registered_xml(sample, tmp_path,
                                                                                     monkeypatch, capsys):
    res = tmp_path / "res"
    assert main(["run", str(sample), str(res / "fused.xml"), "--downsample", "4", "-q"]) == 0
    capsys.readouterr()  # this run's own warnings, if any
    before = snapshot(res)
    assert set(before) == {"fused.xml", "fused.h5", "fused.registered.xml"}
    calls = []
    monkeypatch.setattr(HEAVY["run"], lambda *a, **k: calls.append(1))
    assert main(["run", str(sample), str(res / "fused.xml"), "-q"]) == 2
    err = _one_line_error(capsys)
    assert "already exists" in err and calls == [] and snapshot(res) == before
    # Only the registered XML in the way: still refused, and it is not rotated to ~1.
    (res / "fused.xml").unlink()
    (res / "fused.h5").unlink()
    assert main(["run", str(sample), str(res / "fused.xml"), "-q"]) == 2
    assert str(res / "fused.registered.xml") in _one_line_error(capsys)
    assert calls == [] and sorted(p.name for p in res.iterdir()) == ["fused.registered.xml"]


def test_run_library_refuses_existing_outputs_before_registering(sample, tmp_path, monkeypatch):
    from tilefuse import OutputExistsError

    calls = []
    monkeypatch.setattr(HEAVY["run"], lambda *a, **k: calls.append(1))
    (tmp_path / "out.registered.xml").write_bytes(OLD)
    with pytest.raises(OutputExistsError, match="out.registered.xml: output already exists"):
        run(sample, tmp_path / "out.ome.zarr")
    assert calls == [] and (tmp_path / "out.registered.xml").read_bytes() == OLD


# -- convert: bad positions never replace a good project ----------------------------------------
@pytest.fixture
def tiles(tmp_path) -> Path:
    folder = tmp_path / "tiles"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        tifffile.imwrite(folder / f"t{i}.tif", rng.integers(0, 1000, (24, 32), dtype=np.uint16))
    return folder


@pytest.mark.parametrize("row, message", [
    ("t0.tif,nan,0", "line 2: x is 'nan'; positions must be finite"),
    ("t0.tif,0,-inf", "line 2: y is '-inf'; positions must be finite"),
    ("t0.tif,1e300,0", "image 0: position (z, y, x) = (0, 0, 1e+300)"),
    ("t0.tif,0,0,3000000000", "line 2: tile 3000000000 is outside the range of a Java int"),
    ("t0.tif,0,0,1.5", "line 2: tile is '1.5', not an integer"),
])
@pytest.mark.parametrize("overwrite", [False, True])
def test_convert_with_bad_positions_writes_nothing_and_keeps_the_old_project(tiles, tmp_path, capsys, row,
                                                                          message, overwrite):
    header = "file,x,y,tile" if row.count(",") == 3 else "file,x,y"
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_text(f"{header}\nt0.tif,0,0{',0' if 'tile' in header else ''}\n"
                    f"t1.tif,30,0{',1' if 'tile' in header else ''}\n")
    bad.write_text(f"{header}\n{row}\nt1.tif,30,0{',1' if 'tile' in header else ''}\n")
    out = tmp_path / "p" / "d.xml"
    if overwrite:
        assert main(["convert", str(tiles), str(good), "-o", str(out), "-q"]) == 0
        capsys.readouterr()
    before = snapshot(tmp_path / "p") if overwrite else {}
    argv = ["convert", str(tiles), str(bad), "-o", str(out), "-q"] + (["--overwrite"] if overwrite else [])
    assert main(argv) == 2
    err = _one_line_error(capsys)
    assert message in err and ("bad.csv" in err or "image 0" in err)
    if overwrite:
        assert snapshot(tmp_path / "p") == before
        open_project(out).image(open_project(out).views[0]).compute()  # still the good project
    else:
        assert not (tmp_path / "p").exists(), "no project under the final names, no partial output, no folder"


def test_write_project_never_renames_a_project_it_cannot_open(tmp_path, monkeypatch):
    """If a check before writing missed something, reading the XML back stops the swap."""
    import tilefuse.writers.project as wp

    images = [np.ones((8, 8), np.uint16), np.zeros((8, 8), np.uint16)]
    out = tmp_path / "d.xml"
    tilefuse.write_project(out, images, [(0, 0), (0, 6)])
    before = snapshot(tmp_path)
    monkeypatch.setattr(wp, "_check_positions", lambda *a: None)
    monkeypatch.setattr(wp, "check_spimdata", lambda *a: None)
    with pytest.raises(TilefuseError, match="cannot open again.*nothing was replaced.*non-finite"):
        tilefuse.write_project(out, images, [(0, 0), (np.nan, 6)], overwrite=True)
    assert snapshot(tmp_path) == before, "old project intact; no partial, marker or lock left"


# -- partial outputs: deleted only if tilefuse wrote them -----------------------------------------
@pytest.mark.parametrize("name, flags", [("f.ome.zarr", ["--no-resume"]), ("f.ome.zarr", []),
                                         ("f.ome.zarr", ["--resume"]), ("f.tif", []), ("f.xml", [])])
def test_a_partial_output_tilefuse_did_not_write_is_never_deleted(sample, tmp_path, capsys, name, flags):
    o = tmp_path / "o"
    foreign = o / f"{name}.partial"
    foreign.mkdir(parents=True)
    (foreign / "results.csv").write_text("someone's work")
    assert main(["fuse", str(sample), str(o / name), *flags, "-q"]) == 2
    err = _one_line_error(capsys)
    assert str(foreign) in err and "not written by tilefuse" in err
    assert sorted(p.name for p in o.iterdir()) == [f"{name}.partial"]
    assert (foreign / "results.csv").read_text() == "someone's work"


def test_no_resume_deletes_the_partial_output_of_a_killed_run(sample, tmp_path):
    out = tmp_path / "o" / "f.ome.zarr"
    child = run_child(["fuse", sample, out, "--chunks", "1,32,32", "-q"], kill_at=6)
    assert child.returncode == -signal.SIGKILL, child.stderr
    partial = out.with_name("f.ome.zarr.partial")
    assert partial.is_dir() and (out.with_name("f.ome.zarr.partial.tilefuse")).is_file(), "marked"
    assert main(["fuse", str(sample), str(out), "--no-resume", "-q"]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["f.ome.zarr"], "partial, marker and stale lock gone"


# -- two runs, one output -----------------------------------------------------------------------
HOLDER = r"""
import sys, time
from tilefuse.writers._atomic import atomic_output
with atomic_output(sys.argv[1]) as tmp:
    tmp.mkdir()
    (tmp / "chunk").write_text("being written")
    print("holding", flush=True)
    time.sleep(60)
"""


def test_a_second_run_into_the_same_output_stops_at_once_and_a_dead_runs_lock_blocks_nothing(
        sample, tmp_path, capsys):
    out = tmp_path / "o" / "f.ome.zarr"
    out.parent.mkdir()
    env = dict(os.environ, PYTHONPATH=str(Path(tilefuse.__file__).resolve().parents[1]))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "holding"
        for flags in ([], ["--overwrite"], ["--no-resume"]):
            assert main(["fuse", str(sample), str(out), *flags, "-q"]) == 2
            err = _one_line_error(capsys)
            assert f"another tilefuse run (pid {holder.pid}) is writing this output" in err
            assert (out.with_name("f.ome.zarr.partial") / "chunk").read_text() == "being written"
    finally:
        holder.kill()
        holder.wait()
    assert out.with_name("f.ome.zarr.lock").exists(), "a killed run leaves its lock file"
    assert main(["fuse", str(sample), str(out), "--no-resume", "-q"]) == 0  # its marked partial output goes
    assert sorted(p.name for p in out.parent.iterdir()) == ["f.ome.zarr"]


def test_output_lock_is_reentrant_within_a_process_and_removed_at_the_end(tmp_path):
    from tilefuse._outputs import lock_path
    from tilefuse.writers._atomic import output_lock

    out = tmp_path / "new" / "f.tif"
    with output_lock([out]):
        assert lock_path(out).read_text().split() == [str(os.getpid())]
        with output_lock([out, None]):  # a writer called by the command takes it again
            pass
        assert lock_path(out).exists()
    assert not (tmp_path / "new").exists(), "the lock file and the folder made for it are gone"


# -- command-line values ---------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["fuse", "run", "register", "demo"])
@pytest.mark.parametrize("value", ["-1", "0", "two"])
def test_workers_must_be_a_positive_integer(sample, tmp_path, monkeypatch, capsys, command, value):
    def no_cluster(*args):  # LocalCluster(n_workers=-1) would wait forever for its workers
        raise AssertionError("a cluster was started")

    monkeypatch.setattr("tilefuse.pipeline.cluster_client", no_cluster)
    argv = {"fuse": ["fuse", sample, tmp_path / "f.ome.zarr"], "run": ["run", sample, tmp_path / "f.ome.zarr"],
            "register": ["register", sample], "demo": ["demo", tmp_path / "demo"]}[command]
    with pytest.raises(SystemExit) as info:
        main([*map(str, argv), "--workers", value])
    assert info.value.code == 2
    expected = "must be a whole number, got 'two'" if value == "two" else f"must be at least 1, got {value}"
    assert f"argument --workers: {expected}" in capsys.readouterr().err


def test_positions_csv_from_excel_with_a_byte_order_mark(tiles, tmp_path, capsys):
    csv = tmp_path / "pos.csv"
    csv.write_bytes("\ufefffile,x,y\r\nt0.tif,0,0\r\nt1.tif,30,0\r\n".encode("utf-8"))
    assert main(["convert", str(tiles), str(csv), "-o", str(tmp_path / "p" / "d.xml"), "-q"]) == 0
    project = open_project(tmp_path / "p" / "d.xml")
    np.testing.assert_allclose(project.model(project.views[1])[:3, 3], [0, 0, 30])


@pytest.mark.parametrize("name, content, message", [
    ("pos.csv", b"\x00\x01\x02\xff\xfe", "not a UTF-8 text file (byte 0xff at offset 3)"),
    ("pos.csv", "file,x,y\nt0.tif,0,0\n".encode("utf-16"), "not a UTF-8 text file"),
    ("pos.csv", b"file,x,y\nt0.tif,0\x00,0\n", "line 2: x is '0\\x00', not a number"),
    ("TileConfiguration.txt", b"\x00\x01\x02\xff\xfe", "not a UTF-8 text file (byte 0xff at offset 3)"),
    ("TileConfiguration.txt", "t0.tif; ; (0, 0)\n".encode("utf-16"), "not a UTF-8 text file"),
])
def test_a_binary_positions_file_is_a_clear_error(tiles, tmp_path, capsys, name, content, message):
    positions = tmp_path / name
    positions.write_bytes(content)
    assert main(["convert", str(tiles), str(positions), "-o", str(tmp_path / "p" / "d.xml"), "-q"]) == 2
    err = _one_line_error(capsys)
    assert str(positions) in err and message in err
