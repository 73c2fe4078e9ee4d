"""Registration does not pretend: no kept link is an error, an axis the data cannot tell is left alone."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

import tilefuse
from tilefuse.cli import main
from tilefuse.errors import RegistrationError
from tilefuse.registration import pairwise_shift


def _texture(shape=(200, 200), seed=1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    world = ndimage.gaussian_filter(rng.random(shape), 3)
    return ((world - world.min()) / np.ptp(world) * 3000 + 100).astype(np.uint16)


def test_identical_planes_leave_the_shift_along_them_at_zero():
    world = _texture()
    a, b = world[10:60, 10:110], world[13:63, 8:108]
    flat = pairwise_shift(a, b)
    stack = pairwise_shift(np.broadcast_to(a, (12, *a.shape)), np.broadcast_to(b, (12, *b.shape)))
    assert stack.undetermined == (0,) and flat.undetermined == ()
    assert stack.shift[0] == 0.0
    np.testing.assert_allclose(stack.shift[1:], flat.shift, atol=1e-9)  # the same answer as the plane alone
    np.testing.assert_allclose(flat.shift, [3, -2], atol=0.05)
    # a constant crop stays "constant", not "no axis"
    constant = pairwise_shift(np.ones((4, 8, 8)), np.ones((4, 8, 8)))
    assert not constant.valid and "constant" in constant.reason


def test_registration_keeps_the_stage_z_of_stacks_of_identical_planes(tmp_path):
    # Anisotropic stacks (z voxel 4 world units) at stage z 0, 3, 6, 9: the crops' rounding to whole z
    # voxels came back as z shifts of 1-2 units per link, and the tiles moved to z 0, 4, 8, 12.
    world = _texture()
    truth = [(0, 0), (0, 70), (70, 0), (70, 70)]
    errors = [(0, 0), (3, -2), (-2, 4), (2, 3)]
    tiles = [np.broadcast_to(world[y:y + 96, x:x + 96], (8, 96, 96)) for y, x in truth]
    positions = [(3.0 * i, y + dy, x + dx) for i, ((y, x), (dy, dx)) in enumerate(zip(truth, errors))]
    project = tilefuse.write_project(tmp_path / "dataset.xml", tiles, positions, voxel_size=(4, 1, 1))
    result = tilefuse.register(project)
    assert len(result.links) >= 4 and len(result.accepted) == len(result.links)
    assert all(link.shift[0] == 0 and link.info["undetermined_axes"] == ("z",) for link in result.links)
    registered = result.apply(project)
    for i, view in enumerate(sorted(project.views)):
        before, after = project.transform(view)[:3, 3], registered.transform(view)[:3, 3]
        assert after[0] == pytest.approx(before[0], abs=1e-9), (view, before, after)
        np.testing.assert_allclose(after[1:], truth[i], atol=0.2)


@pytest.fixture
def unregistrable(tmp_path):
    """Four tiles of background only: every pair is rejected."""
    from tilefuse.demo import make_sample_project

    return make_sample_project(tmp_path, grid=(2, 2), tile_shape=(128, 128), overlap=0.1,
                               empty_tiles=[0, 1, 2, 3])


def test_no_kept_link_is_an_error_unless_allowed(unregistrable, tmp_path, capsys):
    with pytest.raises(RegistrationError, match=r"dataset\.xml: nothing was registered: none of the 4 "):
        tilefuse.register(unregistrable)
    result = tilefuse.register(unregistrable, allow_unregistered=True)
    assert not result.accepted and len(result.links) == 4
    source = unregistrable.path.read_bytes()
    out = tmp_path / "registered.xml"
    assert main(["register", str(unregistrable.path), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "nothing was registered" in err and "no XML was written" in err and "--allow-unregistered" in err
    assert not out.exists() and unregistrable.path.read_bytes() == source
    assert main(["register", str(unregistrable.path), "-o", str(out), "-q", "--allow-unregistered"]) == 0
    assert out.exists()


def test_parts_joined_by_no_kept_link_are_named():
    # A row of four tiles whose middle link is rejected: two registered parts, placed relative to each
    # other by the stage alone.  Found on the periodic sample (seed 3): its one ambiguous link was rejected
    # and the three tiles beyond it landed 21 px off, exit 0 and no warning.
    from tilefuse.geometry import Box
    from tilefuse.project.views import ViewId
    from tilefuse.registration.api import solve
    from tilefuse.registration.pairwise import Link, RegistrationGroups

    keys = [(0, i, 0) for i in range(4)]
    groups = RegistrationGroups(members={k: [ViewId(0, i)] for i, k in enumerate(keys)},
                                used={k: [ViewId(0, i)] for i, k in enumerate(keys)},
                                timepoint=dict.fromkeys(keys, 0))
    box = Box.from_arrays((0, 0, 90), (1, 100, 100))
    links = [Link(keys[0], keys[1], np.array([0.0, 1.0, -2.0]), 0.9, box),
             Link(keys[1], keys[2], np.array([0.0, 0.5, 1.0]), 0.2, box),  # below min_correlation: rejected
             Link(keys[2], keys[3], np.array([0.0, -1.5, 0.5]), 0.9, box)]
    result = solve(links, groups, max_shift=None)
    assert [link.accepted for link in result.links] == [True, False, True]
    (warning,) = result.warnings()
    assert warning.startswith("the kept links join the groups into 2 separate parts (2, 2 groups)")
    assert "(0, 1, 0) - (0, 2, 0) (rejected: correlation below 0.3 (r = 0.200))" in warning
    # joined again: no warning
    links[1].correlation = 0.9
    assert solve(links, groups, max_shift=None).warnings() == []


def test_interest_points_that_match_nothing_are_an_error_unless_allowed(tmp_path):
    from tilefuse.demo import make_sample_project
    from tilefuse.interestpoints.options import DetectionOptions

    project = make_sample_project(tmp_path, angles=2)
    nothing = DetectionOptions(threshold=0.9)  # above every bead: no point in any view
    with pytest.raises(RegistrationError, match=r"dataset\.xml: nothing was registered: of the 1 pairs of views "
                                                r"compared, 0 had matching interest points labelled 'none'"):
        tilefuse.register(project, label="none", detection=nothing)
    result = tilefuse.register(project, label="none", detection=nothing, allow_unregistered=True)
    assert not result.matches.matched
