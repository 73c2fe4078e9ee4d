"""`tilefuse info` tells the truth, and lookups that find nothing say what exists.

* views with a Stitching Transform are counted as views (a project registered twice has 12, not 24);
* the text layout and the ``--plot`` picture come from one function, and a 3×5 grid prints as 3×5
  even after registration moved its tiles by more than a few voxels;
* every list that is cut says so (``… and 7 more``);
* ``Project.select`` and ``make_groups`` name the channels (tiles, timepoints...) that exist.
"""

from __future__ import annotations

import numpy as np
import pytest

import tilefuse
from tilefuse.cli import main
from tilefuse.demo import make_sample_project
from tilefuse.errors import RegistrationError, SelectionError
from tilefuse.geometry.affine import translation_matrix
from tilefuse.project.summary import project_summary, tile_layout


def _layout_rows(text: str) -> list[list[str]]:
    """The printed grid of a summary: one list of cells per row."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("layout"))
    return [line.split() for line in lines[start + 1:] if line.startswith("  ")]


def _shifted(project, shifts) -> None:
    """Move each tile by a world (z, y, x) shift, as a registration would."""
    for view, shift in zip(project.views, shifts):
        project.preconcatenate(view, translation_matrix(shift), "Stitching Transform")


@pytest.fixture(scope="module")
def grid_3x5(tmp_path_factory):
    return make_sample_project(tmp_path_factory.mktemp("g35") / "p", grid=(3, 5), tile_shape=(64, 64),
                               overlap=0.1)


def test_registered_twice_counts_views_not_transforms(tmp_path, capsys):
    project = make_sample_project(tmp_path / "p", grid=(2, 3), tile_shape=(128, 128), overlap=0.2)
    once = tilefuse.register(project).apply(project)
    twice = tilefuse.register(once).apply(once)
    twice.save(tmp_path / "twice.xml")
    chain = [vt.name for vt in twice.transforms(twice.views[0])]
    assert chain.count("Stitching Transform") == 2  # what made the old count 12

    assert main(["info", str(tmp_path / "twice.xml")]) == 0
    text = capsys.readouterr().out
    assert "stitched (6 of 6 views with a Stitching Transform, up to 2 per view from registering 2 times" in text
    assert "12 views" not in text
    assert _layout_rows(text) == [["0", "1", "2"], ["3", "4", "5"]]


def test_3x5_grid_prints_as_3x5_after_registration_moves(grid_3x5):
    project = grid_3x5.copy()
    # Corrections of up to 12 world units (a tile is 64 wide, its step 58): the old 8-unit
    # clustering of the tiles' corners scattered such a grid over more rows and columns.
    rng = np.random.default_rng(3)
    _shifted(project, np.c_[np.zeros(15), rng.uniform(-12, 12, (15, 2))])
    text = project_summary(project)
    assert "layout       3 rows × 5 columns of 15 tiles" in text
    assert _layout_rows(text) == [[str(5 * r + c) for c in range(5)] for r in range(3)]

    # The picture is drawn from the same placements.
    placements = tile_layout(project)
    assert [(p.label, p.row, p.column) for p in placements] == [(i, i // 5, i % 5) for i in range(15)]
    box = placements[7].box
    np.testing.assert_allclose(box.lo, project.world_box(project.views[7]).lo)


def test_plot_layout_draws_the_text_layout(grid_3x5, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from tilefuse import plotting
    from tilefuse.project import summary

    real, calls = summary.tile_layout, []
    monkeypatch.setattr(summary, "tile_layout", lambda project, views=None: calls.append(real(project, views))
                        or calls[-1])
    out = plotting.plot_layout(grid_3x5, tmp_path / "layout.png")
    assert out.stat().st_size > 1000
    assert len(calls) == 1 and [p.label for p in calls[0]] == list(range(15))


def test_a_tile_moved_by_a_tile_gets_its_own_cell(grid_3x5):
    """The layout is not forced into a grid: a tile registration put elsewhere shows elsewhere."""
    project = grid_3x5.copy()
    shifts = np.zeros((15, 3))
    shifts[4, 1] = 60.0  # tile 4 (top right) moved down by about one tile
    _shifted(project, shifts)
    rows = _layout_rows(project_summary(project))
    assert rows[1][4] == "4+9" and rows[0][4] == "."


def test_cut_lists_say_how_much_was_left_out(tmp_path):
    images = [np.zeros((1, 8 + i, 8), np.uint16) for i in range(30)]
    positions = [(0, 0, 20 * i) for i in range(30)]
    project = tilefuse.write_project(tmp_path / "d.xml", images, positions, format="tiff")
    text = project_summary(project)
    assert "tiles        30  [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 … and 18 more]" in text
    assert text.splitlines()[2].endswith("… and 28 more")  # the image loader line: 30 TIFF files, 2 shown
    assert "view size    … and 27 more sizes (27 setups)" in text
    with pytest.raises(SelectionError, match=r"no tiles 30, 31 \(tiles: 0, 1, .*, 19 … and 10 more\)"):
        project.select(tile=[30, 31])


def test_select_names_what_exists(grid_3x5):
    project = grid_3x5
    assert project.select(channel="488", tile=3) == [tilefuse.ViewId(0, 3)]
    assert project.select(channel=0, tile="3") == [tilefuse.ViewId(0, 3)]  # ids as numbers or text
    with pytest.raises(SelectionError, match=r"dataset\.xml: no channel 'GFP' \(channels: 0 \"488\"\)"):
        project.select(channel="GFP")
    with pytest.raises(SelectionError, match=r"no tile 15 \(tiles: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14\)"):
        project.select(tile=15)
    with pytest.raises(SelectionError, match=r"no timepoint 2 \(timepoints: 0\)"):
        project.select(timepoint=2)
    # values that exist but match no view together are an empty selection, not an error
    assert project.select(tile=[3], setup=4) == []


def test_make_groups_names_the_channels(tmp_path, capsys):
    images = [np.zeros((1, 16, 16), np.uint16)] * 3
    project = tilefuse.write_project(tmp_path / "d.xml", images, [(0, 0, 0), (0, 0, 10), (0, 0, 0)],
                                     tiles=[0, 1, 0], channels=[0, 0, 1],
                                     names={"channel": {0: "DAPI", 1: "GFP"}})
    with pytest.raises(SelectionError, match=r"d\.xml: no channel '488' \(channels: 0 \"DAPI\", 1 \"GFP\"\)"):
        tilefuse.make_groups(project, channel="488")
    with pytest.raises(RegistrationError, match=r"group \(timepoint 0, tile 1, angle 0\) have no channel 'GFP' "
                                                r"to register on \(they have channels 0 \"DAPI\"\)"):
        tilefuse.make_groups(project, channel="GFP")
    assert main(["register", str(tmp_path / "d.xml"), "--channel", "488", "-q"]) == 2
    err = capsys.readouterr().err
    assert 'no channel \'488\' (channels: 0 "DAPI", 1 "GFP")' in err and err.count("\n") == 1
