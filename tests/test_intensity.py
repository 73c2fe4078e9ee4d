"""Intensity matching over the overlaps: per-view linear models recovered from known tile gains."""

from __future__ import annotations

import numpy as np
import pytest

import tilefuse
from tilefuse.cli import main
from tilefuse.demo import make_sample_project
from tilefuse.intensity import match_intensities
from tilefuse.sample_data import make_mosaic

MOSAIC = dict(grid=(3, 4), tile_shape=(256, 256), overlap=0.15, seed=5, vignetting=0.0)


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A registered 2D mosaic whose tiles differ only by a random gain in [0.85, 1.15]."""
    base = tmp_path_factory.mktemp("intensity")
    project = make_sample_project(base, ndim=2, factors=((1, 1, 1), (1, 2, 2), (1, 4, 4)), **MOSAIC)
    registered = tilefuse.register(project).apply(project)
    registered.save(base / "registered.xml")
    mosaic = make_mosaic(MOSAIC["grid"], MOSAIC["tile_shape"], MOSAIC["overlap"], seed=MOSAIC["seed"],
                         vignetting=0.0)
    return base, registered, mosaic


@pytest.mark.parametrize("model", ["affine", "gain"])
def test_models_undo_the_tile_gains(registered, model):
    _, project, mosaic = registered
    result = match_intensities(project, model=model)
    assert len(result.pairs) >= 17  # the 17 face neighbours of a 3x4 grid, plus diagonals
    gains = np.array([result.models[v][0] for v in project.views])
    offsets = np.array([result.models[v][1] for v in project.views])
    assert gains.mean() == pytest.approx(1.0) and offsets.mean() == pytest.approx(0.0, abs=1e-9)
    true = mosaic._gains
    # corrected = a (g S + bg) + b: the same signal scale a*g for every tile
    spread = np.std(gains * true) / np.mean(gains * true)
    assert spread < 0.35 * np.std(true) / np.mean(true), (spread, np.std(true) / np.mean(true))
    assert result.mismatch_after < 0.15 * result.mismatch_before
    if model == "gain":
        assert np.all(offsets == 0)


def test_adjustments_are_stored_and_fusion_applies_them(registered, tmp_path):
    base, project, mosaic = registered
    out = tmp_path / "adjusted.xml"
    assert main([ "intensity", str(base / "registered.xml"), "-o", str(out), "-q"]) == 0
    adjusted = tilefuse.open_project(out)
    models = adjusted.data.intensity_adjustments
    assert set(models) == set(project.views)
    from tilefuse.project.summary import project_summary

    assert f"intensities  {len(models)} views adjusted" in project_summary(adjusted)
    # fused with the adjustments, tile interiors agree on the clean image's scale
    plan = tilefuse.plan_fusion(adjusted, dtype=np.float32)
    plain = plan.to_dask()[0, 0, 0].compute()
    fixed = tilefuse.plan_fusion(adjusted, dtype=np.float32, intensity_adjustment=True).to_dask()[0, 0, 0].compute()
    truth_ratio_plain, truth_ratio_fixed = [], []
    origin = np.asarray(plan.origin)[1:]  # world (y, x) of fused voxel 0; registration keeps tile 0 at 0
    for pos in mosaic.true_positions:
        y, x = np.round(np.asarray(pos) - origin + 100).astype(int)
        region = (slice(int(pos[0]) + 100, int(pos[0]) + 156), slice(int(pos[1]) + 100, int(pos[1]) + 156))
        truth = mosaic.ground_truth(region).mean()
        truth_ratio_plain.append(plain[y:y + 56, x:x + 56].mean() / truth)
        truth_ratio_fixed.append(fixed[y:y + 56, x:x + 56].mean() / truth)
    cv = lambda v: np.std(v) / np.mean(v)  # noqa: E731
    assert cv(truth_ratio_fixed) < 0.4 * cv(truth_ratio_plain), (cv(truth_ratio_fixed), cv(truth_ratio_plain))


def test_bad_parameters(registered):
    _, project, _ = registered
    from tilefuse import OptionError

    with pytest.raises(OptionError, match="model: must be one of 'affine', 'gain', got 'poly'"):
        match_intensities(project, model="poly")
    with pytest.raises(OptionError, match="downsampling: must be greater than 0, got 0"):
        match_intensities(project, downsampling=0)


def test_run_matches_intensities_before_fusing(registered, tmp_path):
    from tilefuse.pipeline import run

    base, project, _ = registered
    report = run(base / "registered.xml", tmp_path / "out.ome.zarr", skip_registration=True,
                 match_intensity=True)
    assert report.intensity is not None and report.intensity.mismatch_after < report.intensity.mismatch_before
    saved = tilefuse.open_project(report.registered_xml)
    assert saved.data.intensity_adjustments == report.intensity.models
    assert (tmp_path / "out.ome.zarr").is_dir() and "mismatch" in report.summary()
