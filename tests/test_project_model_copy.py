"""Project.copy: a deep copy that is equal to the original and shares nothing mutable with it."""

import numpy as np
from lxml import etree

from tilefuse.demo import make_sample_project
from tilefuse.geometry import translation_matrix
from tilefuse.project.model import PairwiseResult
from tilefuse.project.xml_write import format_number, format_numbers, spimdata_bytes


def test_copy_is_equal_and_independent(tmp_path):
    project = make_sample_project(tmp_path / "s", grid=(1, 2), tile_shape=(32, 32), ndim=2)
    view = sorted(project.data.registrations)[0]
    extra = etree.fromstring("<Other a='1'><b>kept</b></Other>")
    project.data.registrations[view][0].extras.append((None, extra))
    project.data.stitching_results = [PairwiseResult(views_a=(view,), views_b=(view,),
                                                     shift=translation_matrix([0.0, 1.5, -2.0]),
                                                     correlation=0.9, hash=0.0)]
    before = spimdata_bytes(project.data)

    new = project.copy()
    assert spimdata_bytes(new.data) == before
    # Mutate everything mutable in the copy: the original is untouched.
    new.data.registrations[view][0].matrix[0, 3] = 99.0
    new.data.registrations[view][0].extras[0][1].set("a", "2")
    new.data.registrations[view].append(new.data.registrations[view][0])
    new.data.setups[view.setup].attributes["tile"] = 77
    new.data.stitching_results[0].shift[1, 3] = 5.0
    new.data.missing_views = {view}
    assert spimdata_bytes(project.data) == before
    assert spimdata_bytes(new.data) != before


def test_format_numbers_matches_format_number():
    values = [0.0, -0.0, 1.0, -5.0, 1e15, 1e16, 2.5e-7, -1.0 / 3.0, 123456.789, float("inf"), float("nan")]
    assert format_numbers(values) == " ".join(format_number(v) for v in values)
    assert format_numbers(np.float32(0.1)) == format_number(np.float32(0.1))
    assert format_number(-0.0) == "0.0"
    assert format_number(7) == "7"
    assert [float(t) for t in format_numbers([1 / 3, 2e-300]).split()] == [1 / 3, 2e-300]
