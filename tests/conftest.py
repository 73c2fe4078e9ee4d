"""Shared fixtures: the ``../shared`` examples (skipped when absent) and small projects."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
EXAMPLES = SHARED / "bigstitcher_examples"
NEGATIVE_EXAMPLES = {"pydbs_malformed_truncated.xml", "rhapso_filemap2_no_filemapping_listtp.xml"}


def example_xmls(negative: bool = False) -> list[Path]:
    if not EXAMPLES.is_dir():
        return []
    return sorted(p for p in EXAMPLES.glob("*.xml") if (p.name in NEGATIVE_EXAMPLES) == negative)


@pytest.fixture
def examples_dir() -> Path:
    if not EXAMPLES.is_dir():
        pytest.skip("../shared/bigstitcher_examples is not available")
    return EXAMPLES


@pytest.fixture(autouse=True)
def _fresh_handles():
    """Loaders cache file handles per path and tests rewrite files: start and end clean."""
    from tilefuse.loaders.base import drop_cached_handles

    drop_cached_handles()
    yield
    drop_cached_handles()


def loader_element(xml_file: Path):
    """The ``<ImageLoader>`` element of a project XML."""
    from lxml import etree

    return etree.parse(str(xml_file)).getroot().find("SequenceDescription/ImageLoader")


def example_loader_element(name: str):
    """The ``<ImageLoader>`` of a shared example; skips when the examples are absent."""
    path = EXAMPLES / name
    if not path.is_file():
        pytest.skip(f"{path} not available")
    return loader_element(path)


@pytest.fixture
def every_ngff_output_checked(request):
    """After the test: every OME-Zarr image left in its ``tmp_path`` is valid for ome-zarr-models, ome-zarr-py, zarr.

    Modules that write OME-Zarr opt in with
    ``pytestmark = pytest.mark.usefixtures("every_ngff_output_checked")``
    (tests that damage files on purpose do not).
    """
    yield
    tmp = request.node.funcargs.get("tmp_path")
    if tmp is None or getattr(request.node, "rep_call_failed", True):  # a failed test has told its story
        return
    from ngff import check_ngff_image, ngff_images_under

    for image in ngff_images_under(tmp):
        check_ngff_image(image)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Remember whether a test's body failed, for fixtures that check more only after a passing test."""
    outcome = yield
    if call.when == "call":
        item.rep_call_failed = outcome.get_result().failed
