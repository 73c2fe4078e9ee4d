"""Nikon ND2: multi-point (``P``) acquisitions with channels, z-stacks and timepoints, through nd2 (``tilefuse[nd2]``).

Why nd2: the maintained reader of NIS-Elements files (modern and legacy
variants), lazy (memory-mapped frames, a dask view), with typed metadata
including each frame's stage position; bioio-nd2 wraps it.

Conventions (nd2's ``ND2File.frame_metadata``/``experiment`` models; Bio-Formats'
``NativeND2Reader`` numbers series by XY position too):

* **series** = the XY position index ``P`` (one series when there is none).
* **voxel size**: ``ND2File.voxel_size()`` (µm; z is the z-loop step).
* **positions**: ``stagePositionUm`` (x, y, z) of the frame at that position's
  first z-plane, first timepoint and first channel, in µm.  NIS reports the
  stage position of the optical axis, i.e. the centre of the field: with
  tiles of equal size that moves the whole mosaic, not its tiles relative to
  each other.  The camera's orientation relative to the stage
  (``cameraTransformationMatrix``) is *not* applied: when it is not the
  identity, a note says so and ``--stage-axes`` sets the mapping.
* Channel names from the channel metadata (``channel.name``, else the
  emission wavelength).
"""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedFormatError
from .acquisition import Acquisition, AcquisitionFile, Region, Stack

__all__ = ["Nd2Acquisition"]


class Nd2Acquisition(AcquisitionFile):
    """An ND2 file: one series per XY position."""

    kind = "nd2"
    suffixes = (".nd2",)
    extra = "nd2"

    def __init__(self, path) -> None:
        super().__init__(path)
        self._nd2 = self._open_reader("nd2", "ND2File")
        self._dask = None

    def close(self) -> None:
        self._nd2.close()

    def _describe(self) -> Acquisition:
        f = self._nd2
        if getattr(f, "is_rgb", False):
            raise UnsupportedFormatError(f"{self.path}: RGB ND2 files are not read by tilefuse")
        sizes = dict(f.sizes)
        acq = Acquisition(self.path, "nd2", [])
        vs = f.voxel_size()
        acq.voxel_size = (float(vs.z) if sizes.get("Z", 1) > 1 else None, float(vs.y), float(vs.x))
        channels = getattr(f.metadata, "channels", None) or []
        for c, ch in enumerate(channels):
            name = getattr(ch.channel, "name", "") or (f"{ch.channel.emissionLambdaNm:g}"
                                                      if getattr(ch.channel, "emissionLambdaNm", None) else "")
            if name:
                acq.channel_names[c] = name
        matrix = _camera_matrix(channels)
        if matrix is not None and not np.allclose(matrix, np.eye(2), atol=1e-3):
            acq.notes.append(f"the camera is turned relative to the stage (cameraTransformationMatrix "
                             f"{matrix.ravel().round(3).tolist()}); not applied: check the layout and give "
                             "--stage-axes if tiles land in the wrong places")
        shape = (sizes.get("Z", 1), sizes["Y"], sizes["X"])
        seq_of = _first_frames(f)
        for p in range(sizes.get("P", 1)):
            position = _stage_position(f, seq_of.get(p))
            for t in range(sizes.get("T", 1)):
                for c in range(sizes.get("C", 1)):
                    acq.stacks.append(Stack(p, c, t, shape, np.dtype(f.dtype), (1, shape[1], shape[2]),
                                            position, f"P{p}"))
            acq.series_names[p] = f"P{p}"
        return acq

    def read(self, series: int, channel: int, timepoint: int, region: Region) -> np.ndarray:
        with self._lock:
            if self._dask is None:
                self._dask = self._nd2.to_dask()
            axes = list(self._nd2.sizes)
            index = []
            for a in axes:
                index.append({"P": series, "T": timepoint, "C": channel, "Z": region[0], "Y": region[1],
                              "X": region[2]}.get(a, 0))
            out = np.asarray(self._dask[tuple(index)])
        if "Z" not in axes:
            out = out[None][region[0]]
        return out


def _first_frames(f) -> dict[int, int]:
    """Position index -> sequence index of its first frame (z 0, t 0)."""
    out: dict[int, int] = {}
    for seq, loops in enumerate(getattr(f, "loop_indices", ()) or ()):
        if loops.get("Z", 0) == 0 and loops.get("T", 0) == 0:
            out.setdefault(loops.get("P", 0), seq)
    return out


def _stage_position(f, seq: int | None):
    if seq is None:
        return None
    try:
        x, y, z = f.frame_metadata(seq).channels[0].position.stagePositionUm
    except Exception:  # older files without per-frame metadata
        return None
    return (float(z), float(y), float(x))


def _camera_matrix(channels):
    try:
        values = channels[0].volume.cameraTransformationMatrix
    except (IndexError, AttributeError):
        return None
    return np.asarray(values, dtype=float).reshape(2, 2) if values is not None and len(values) == 4 else None
