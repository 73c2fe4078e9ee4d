"""An input changed while the fusion reads it: the output is not committed."""

from __future__ import annotations

import os

import pytest

import tilefuse
from tilefuse.demo import make_sample_project
from tilefuse.errors import ImageDataError


def _rewrite_at_first_read(project):
    """Make the project's HDF5 file look rewritten (a new modification time) at the loader's first read.

    Returns ``(loader, its own read, list that holds True once the file changed)``.
    """
    (h5,) = {f for v in project.views for f in project.loader.view_files(v)}
    loader, read = project.loader, project.loader.read
    changed = []

    def read_and_change(*args, **kwargs):
        if not changed:
            stat = os.stat(h5)
            os.utime(h5, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
            changed.append(True)
        return read(*args, **kwargs)

    loader.read = read_and_change
    return loader, read, changed


@pytest.mark.parametrize("name", ["fused.ome.zarr", "fused.tif"])
def test_input_changed_mid_run_leaves_the_output_uncommitted(tmp_path, name):
    # A Zarr chunk deleted while `fuse` ran read as zeros: the image was committed half old, half new,
    # exit 0.  Here the project's HDF5 file is rewritten (a new modification time) at the first read.
    project = make_sample_project(tmp_path / "p", grid=(1, 2), tile_shape=(64, 64), overlap=0.25)
    loader, read, changed = _rewrite_at_first_read(project)
    out = tmp_path / name
    with pytest.raises(ImageDataError, match=r"dataset\.xml: the files of view .* changed while the fusion read "
                                             rf"them .*{name} was not committed"):
        tilefuse.write_fused(tilefuse.plan_fusion(project), out)
    assert changed and not out.exists()
    # unchanged since: the next run starts over (other input identity) and commits
    loader.read = read
    assert tilefuse.write_fused(tilefuse.plan_fusion(project), out) == out and out.exists()


@pytest.mark.parametrize("container", ["hdf5", "n5", "zarr"])
def test_input_changed_mid_run_leaves_a_bdv_project_output_uncommitted(tmp_path, container):
    # The BigStitcher-project outputs (`tilefuse run X.xml out.xml`) lacked the check the OME-Zarr and TIFF
    # outputs have: an input rewritten while being fused left a committed project, exit 0.
    project = make_sample_project(tmp_path / "p", grid=(1, 2), tile_shape=(64, 64), overlap=0.25)
    loader, read, changed = _rewrite_at_first_read(project)
    out = tmp_path / "fused" / "fused.xml"
    with pytest.raises(ImageDataError, match=r"dataset\.xml: the files of view .* changed while the fusion read "
                                             r"them .*fused\.xml was not committed"):
        tilefuse.write_fused(tilefuse.plan_fusion(project), out, container=container)
    assert changed and not out.exists()
    assert [p.name for p in out.parent.iterdir() if not p.name.endswith((".partial", ".partial.tilefuse"))] == []
    loader.read = read
    assert tilefuse.write_fused(tilefuse.plan_fusion(project), out, container=container) == out
    assert tilefuse.open_project(out).views
