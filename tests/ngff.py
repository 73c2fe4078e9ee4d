"""Check OME-Zarr images as their readers see them: ome-zarr-models (the spec), ome-zarr-py (napari) and zarr.

:func:`check_ngff_image` checks one image; the ``every_ngff_output_checked``
fixture (tests/conftest.py) runs it on every image a test leaves in its
``tmp_path``, so that every output the writers make in those tests is validated,
not only the ones a test thought of.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import zarr


def ngff_version(path: str | os.PathLike) -> str | None:
    """The NGFF version of the multiscale image at ``path`` (a directory), or None when it is not one."""
    path = Path(path)
    try:
        if (path / "zarr.json").is_file():
            meta = json.loads((path / "zarr.json").read_text())
            ome = meta.get("attributes", {}).get("ome", {})
            return ome.get("version") if meta.get("node_type") == "group" and "multiscales" in ome else None
        if (path / ".zattrs").is_file() and (path / ".zgroup").is_file():
            multiscales = json.loads((path / ".zattrs").read_text()).get("multiscales")
            return multiscales[0].get("version") if multiscales else None
    except (OSError, ValueError, AttributeError, IndexError, KeyError):
        return None
    return None


def check_ngff_image(path: str | os.PathLike):
    """Validate the image at ``path`` with ome-zarr-models, read it with ome-zarr-py and zarr; return the model.

    ome-zarr-models checks the metadata *and* every level array (dimensions,
    axes, transforms) against the version the metadata states; ome-zarr-py
    must find the same levels with the same shapes and pixels as zarr.
    """
    pytest.importorskip("ome_zarr_models", reason="ome-zarr-models needs Python >= 3.11")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    path = Path(path)
    version = ngff_version(path)
    assert version in ("0.4", "0.5"), f"{path}: not an NGFF 0.4/0.5 multiscale image ({version!r})"
    group = zarr.open_group(str(path), mode="r")
    zarr_format = group.metadata.zarr_format
    assert zarr_format == (3 if version == "0.5" else 2), f"{path}: NGFF {version} in Zarr v{zarr_format}"
    if version == "0.5":
        from ome_zarr_models.v05.image import Image
    else:
        from ome_zarr_models.v04.image import Image
    model = Image.from_zarr(group)  # raises a pydantic ValidationError naming what is wrong

    attrs = group.attrs.asdict()
    multiscale = (attrs["ome"] if version == "0.5" else attrs)["multiscales"][0]
    levels = [group[d["path"]] for d in multiscale["datasets"]]
    nodes = [n for n in Reader(parse_url(str(path)))() if any(isinstance(s, Multiscales) for s in n.specs)]
    assert nodes, f"ome-zarr-py found no multiscale image in {path}"
    assert [tuple(d.shape) for d in nodes[0].data] == [a.shape for a in levels], path
    smallest = levels[-1]
    np.testing.assert_array_equal(np.asarray(nodes[0].data[-1]), smallest[...], err_msg=str(path))
    return model


def ngff_images_under(root: str | os.PathLike) -> list[Path]:
    """Every complete multiscale image below ``root`` (not inside a ``.partial`` output, not nested in another)."""
    found = []
    for folder, dirs, _ in os.walk(root):
        if ngff_version(folder) is not None:
            found.append(Path(folder))
            dirs.clear()  # its levels are arrays, not images
        else:
            dirs[:] = [d for d in dirs if not d.endswith(".partial") and d != ".tilefuse"]
    return sorted(found)
