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
