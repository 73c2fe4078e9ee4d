"""Registration with real stage errors on periodic content, and the overlap-consistency score (issue 14, goal 3).

The sample (``make_sample_project(periodic=True)``): a row of ten 256x256
tiles of a turned lattice of dots with a few distinct marks, 50 % overlap,
each tile up to 12.8 px off its stage position (neighbours' steps differ by
up to 20 % of the 128 px overlap).  Before the exhaustive check, three of its
nine links landed on periodic aliases or slivers and the tiles were placed
up to 30 px from the truth.
"""

from __future__ import annotations

import numpy as np
import pytest

import tilefuse
from tilefuse.demo import SampleOptions, make_sample_project, score_registration
from tilefuse.errors import OptionError
from tilefuse.registration import exhaustive
from tilefuse.registration import phase_correlation as pc
from tilefuse.registration.options import RegistrationOptions
from tilefuse.sample_data import load_truth

#: What the stage may be off by between neighbours (world px): a generous bound of the sample's 25.6.
STAGE_ERROR = 32


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("periodic")
    project = make_sample_project(out, periodic=True)
    return project, out / "truth.json"


def _link_errors(project, result, truth_path):
    truth = load_truth(truth_path)
    offsets = truth["true_positions"] - truth["stage_positions"]
    tile = {key: project.attribute(views[0], "tile") for key, views in result.groups.members.items()}
    return {(tile[link.a], tile[link.b]): float(np.linalg.norm(link.shift[1:] - (offsets[tile[link.b]]
                                                                                  - offsets[tile[link.a]])))
            for link in result.links}


def test_periodic_sample_registers_within_half_a_pixel(sample):
    project, truth = sample
    result = tilefuse.register(project, max_stage_error=STAGE_ERROR)
    assert [link.status for link in result.links] == ["accepted"] * 9, result.summary()
    errors = _link_errors(project, result, truth)
    assert max(errors.values()) < 0.5, errors
    score = score_registration(result.apply(project), truth)
    assert score["stage_max"] > 10 and score["max"] < 0.5, score
    # the pairs the phase-correlation peaks got wrong were moved by the check, and it says so
    moved = [link for link in result.links if link.info.get("checked", "").startswith("exhaustive check: moved")]
    assert len(moved) >= 3
    assert not result.ghosting() and min(result.consistency.values()) > 0.4


def test_periodic_sample_registers_with_the_defaults(sample):
    """Without the bound only doubtful pairs are checked; on this sample every alias is doubtful."""
    project, truth = sample
    result = tilefuse.register(project)
    assert max(_link_errors(project, result, truth).values()) < 0.5
    assert score_registration(result.apply(project), truth)["max"] < 0.5


def test_without_the_exhaustive_check_aliases_win(sample, monkeypatch):
    """The same run with the check disabled: links on aliases, tiles tens of pixels off (what issue 14 saw)."""
    project, truth = sample
    monkeypatch.setattr(pc, "exhaustive_check", lambda *args, **kwargs: None)
    result = tilefuse.register(project, max_stage_error=STAGE_ERROR)
    errors = _link_errors(project, result, truth)
    assert sum(e > 1 for e in errors.values()) >= 2, errors
    assert score_registration(result.apply(project), truth)["max"] > 10


def test_consistency_flags_a_wrong_pair(sample, caplog):
    """Move the tiles right of pair 4-5 by 7 px (half a period): that pair, and only it, is flagged."""
    project, truth = sample
    result = tilefuse.register(project, max_stage_error=STAGE_ERROR)
    tile = {key: project.attribute(views[0], "tile") for key, views in result.groups.members.items()}
    for key in result.translations:
        if tile[key] >= 5:
            result.translations[key] = result.translations[key] + np.array([0.0, 0.0, 7.0])
    values = result.check_consistency(project)
    flagged = [(tile[link.a], tile[link.b]) for link in result.ghosting()]
    assert flagged == [(4, 5)], values
    bad = [v for (a, b), v in values.items() if (tile[a], tile[b]) == (4, 5)][0]
    good = [v for (a, b), v in values.items() if (tile[a], tile[b]) != (4, 5)]
    assert bad < 0.3 < min(good)
    assert "ghosting?" in result.summary() and "4, 0) - (0, 5" in result.summary()
    assert any("ghosts there" in text for text in result.warnings())


@pytest.mark.parametrize("exhaustive", ["always", True])
def test_ambiguous_pair_is_not_linked(exhaustive):
    """An overlap with no mark: the lattice alone cannot tell the alignment; the pair gets no link, with or
    without max_stage_error (by default the phase-correlation answer used to stay: an alias as likely as not)."""
    from tilefuse.sample_periodic import PERIOD

    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:128, 0:96].astype(np.float64)
    lattice = ((1 + np.cos(2 * np.pi * x / PERIOD)) * (1 + np.cos(2 * np.pi * y / PERIOD)) / 4) ** 2
    image = 500 + 300 * np.pad(lattice, 40, mode="wrap")
    fixed = rng.poisson(image[40:168, 40:136]).astype(np.float32)
    moving = rng.poisson(image[43:171, 35:131]).astype(np.float32)
    result = pc.pairwise_shift(fixed, moving, max_shift=30 if exhaustive == "always" else None, exhaustive=exhaustive)
    assert result.checked == pc.AMBIGUOUS


def test_a_pair_of_random_texture_is_confirmed_not_ambiguous():
    """The same layout on non-periodic content: every pair checked, the answer confirmed (nothing periodic)."""
    from scipy import ndimage

    rng = np.random.default_rng(1)
    image = 500 + 3000 * ndimage.gaussian_filter(rng.random((300, 300)), 3)
    fixed = rng.poisson(image[40:168, 40:136]).astype(np.float32)
    moving = rng.poisson(image[43:171, 35:131]).astype(np.float32)
    result = pc.pairwise_shift(fixed, moving, exhaustive="always")
    assert result.checked == "exhaustive check: confirmed"
    np.testing.assert_allclose(result.shift, (3, -5), atol=0.1)


@pytest.mark.parametrize("masked", [False, True])
def test_evidence_map_is_the_overlap_pearson_at_every_shift(masked):
    rng = np.random.default_rng(0)
    f, m = rng.random((9, 7)), rng.random((9, 7))
    masks = (np.ones(f.shape, bool), np.ones(f.shape, bool)) if masked else None
    z, fft_shape = exhaustive.evidence_map(f, m, masks, min_count=4)
    for shift in [(0, 0), (2, -3), (-5, 1), (8, 6), (-6, -4), (3, 0)]:
        sf = tuple(slice(max(0, s), n + min(0, s)) for s, n in zip(shift, f.shape))
        sm = tuple(slice(max(0, -s), n - max(0, s)) for s, n in zip(shift, f.shape))
        a, b = f[sf].ravel(), m[sm].ravel()
        expected = np.arctanh(np.corrcoef(a, b)[0, 1]) * np.sqrt(a.size) if a.size >= 4 else -np.inf
        got = z[tuple(s % n for s, n in zip(shift, fft_shape))]
        assert got == pytest.approx(expected, rel=1e-6, abs=1e-9), shift
    if not masked:  # only shifts within reach are evaluated
        near, _ = exhaustive.evidence_map(f, m, min_count=4, reach=(3, 2))
        assert near[3, 2] == z[3, 2] and near[-3, -2] == z[-3, -2]
        assert near[4, 0] == -np.inf and near[0, -3] == -np.inf and np.isfinite(z[4, 0])


def test_periodic_part_removed_keeps_the_marks():
    from tilefuse.sample_periodic import PERIOD

    y, x = np.mgrid[0:128, 0:128].astype(np.float64)
    lattice = np.cos(2 * np.pi * (x + 0.3 * y) / PERIOD)
    mark = np.exp(-((y - 60) ** 2 + (x - 70) ** 2) / (2 * 4.0**2))
    f, _, fraction = exhaustive.periodic_part_removed(lattice + mark, lattice + mark)
    assert fraction > 0.9
    assert np.sum(f**2) < 0.05 * np.sum(lattice**2)
    assert abs(np.corrcoef(f.ravel(), lattice.ravel())[0, 1]) < 0.1
    # what is left is the mark (and, near the borders, some of the lattice: it does not end at a period)
    inner = (slice(16, -16),) * 2
    assert np.corrcoef(f[inner].ravel(), mark[inner].ravel())[0, 1] > 0.8


def test_options():
    assert RegistrationOptions(max_stage_error=30).max_stage_error == (30, 30, 30)
    with pytest.raises(OptionError, match="max_stage_error"):
        RegistrationOptions(max_stage_error=-1)
    with pytest.raises(OptionError, match="periodic"):
        SampleOptions(periodic=True, ndim=3)
    assert SampleOptions(periodic=True).layout() == ((1, 10), (256, 256), 0.5, 12.8, "periodic")
    assert SampleOptions().layout()[2:] == (0.1, 8.0, "procedural")


def _unlinked_named(result, texts) -> list:
    """Links that are not kept and not named in a warning (by the pair, or by a group left without links)."""
    return [link for link in result.rejected
            if not any(f"{link.a} - {link.b}" in t or ("no kept link" in t and (str(link.a) in t or str(link.b) in t))
                       for t in texts)]


#: (tile size, seed) of the sweep: every 64 px seed (where 5 of 10 came out 6-26 px off with no warning)
#: and the 128 px seeds that came out wrong (seed 9 with max_stage_error).
SWEEP = [(64, seed) for seed in range(10)] + [(128, seed) for seed in (2, 3, 4, 5, 6, 9)]


@pytest.fixture(scope="module")
def small_samples(tmp_path_factory):
    root = tmp_path_factory.mktemp("periodic_small")
    return {(tile, seed): (make_sample_project(root / f"t{tile}_s{seed}", periodic=True, tile_shape=(tile, tile),
                                               seed=seed), root / f"t{tile}_s{seed}" / "truth.json")
            for tile, seed in SWEEP}


@pytest.mark.parametrize("bounded", [False, True], ids=["defaults", "max_stage_error"])
def test_small_periodic_tiles_are_right_or_left_unlinked_and_named(small_samples, bounded):
    """Issue 14's leftovers: 64/128 px periodic samples (32/64 px overlaps) came out worse than their stage with
    exit 0.  Now every kept link is right (within 0.5 px of the truth), and every pair without a link is named
    in a warning (its tiles keep their stage-relative placement)."""
    for (tile, seed), (project, truth) in small_samples.items():
        label = f"{tile} px, seed {seed}"
        try:
            result = tilefuse.register(project, **({"max_stage_error": tile / 8} if bounded else {}))
        except tilefuse.errors.RegistrationError as exc:  # nothing kept: an error, no XML (not a silent result)
            assert "nothing was registered" in str(exc), label
            continue
        errors = _link_errors(project, result, truth)
        tile_of = {key: project.attribute(views[0], "tile") for key, views in result.groups.members.items()}
        wrong = [(pair, round(e, 2)) for pair, e in errors.items()
                 if e > 0.5 and any((tile_of[link.a], tile_of[link.b]) == pair for link in result.accepted)]
        assert not wrong, (label, wrong, result.summary())
        texts = result.warnings()
        assert not _unlinked_named(result, texts), (label, texts)
        score = score_registration(result.apply(project), truth)
        assert score["max"] < 0.5 or any("could not be decided" in t for t in texts), (label, score, texts)
