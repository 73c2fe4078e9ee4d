"""The options of interest-point detection and matching: :class:`DetectionOptions`, :class:`MatchingOptions`.

Defaults are BigStitcher's (multiview-reconstruction's ``DifferenceOfGaussianGUI``,
``RANSACParameters``, ``GeometricHashingParameters``, ``RGLDMParameters``,
``IterativeClosestPointParameters`` and ``TransformationModelGUI``); the
command line (``tilefuse detect``, ``match``, ``register``) builds its flags
from these fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._options import Options, number, option, optional, parse_number, parse_numbers, parse_whole, per_axis
from ..errors import OptionError

__all__ = ["DetectionOptions", "MatchingOptions", "DESCRIPTORS", "MODELS", "REGULARIZERS", "DEFAULT_LABEL"]

#: The label BigStitcher proposes for bead detections.
DEFAULT_LABEL = "beads"
#: Matching methods: "auto" picks rotation-invariant between views of different angles, else translation-invariant.
DESCRIPTORS = ("auto", "rotation-invariant", "translation-invariant", "icp")
MODELS = ("translation", "rigid", "affine")
REGULARIZERS = ("none", "translation", "rigid")


def _flag(value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise OptionError("", f"must be True or False, got {value!r}")
    return bool(value)


def _range(value) -> tuple[float, float]:
    lo, hi = per_axis(number(), counts=(2,), names="min,max")(value)
    if not hi > lo:
        raise OptionError("", f"the maximum must be above the minimum, got {lo:g}, {hi:g}")
    return lo, hi


def _downsample_xy(value):
    if value == "auto":
        return value
    n = number(1, 64, integer=True)(value)
    if n & (n - 1):
        raise OptionError("", f"must be a power of two (1, 2, 4, ... 64) or 'auto', got {n}")
    return n


@dataclass(frozen=True)
class DetectionOptions(Options):
    """How to find interest points: BigStitcher's Difference-of-Gaussian (DoG) detector.

    ``sigma`` is in voxels of the image the detector sees (after
    downsampling), the same along every axis; ``threshold`` is a fraction of
    the view's intensity range (the image is normalised to ``[0, 1]`` by its
    minimum and maximum, or by ``intensity_range``).

    Examples
    --------
    >>> from tilefuse.interestpoints import DetectionOptions
    >>> DetectionOptions(threshold=0.01).sigma
    1.8
    """

    sigma: float = option(1.8, check=number(0.6, 100), metavar="VOXELS", example="2.5",
                          help="DoG sigma in voxels of the downsampled image (default 1.8, BigStitcher's)")
    threshold: float = option(0.008, check=number(0, 1, lo_open=True), metavar="FRACTION", example="0.02",
                              help="DoG threshold, a fraction of the intensity range (default 0.008: BigStitcher's "
                                   "'advanced' default; its presets are 0.001, 0.008, 0.03, 0.1)")
    find: str = option("maxima", choices=("maxima", "minima", "both"), example="both",
                       help="bright blobs (maxima, default), dark ones (minima) or both")
    localization: str = option("quadratic", choices=("quadratic", "none"), example="none",
                               help="sub-voxel localisation: a quadratic fit (default) or none")
    downsample_xy: Any = option("auto", check=_downsample_xy,
                                parse=lambda text: text if text == "auto" else parse_whole(text),
                                metavar="auto|N", example="2",
                                help="downsampling in x and y, a power of two (default auto: the largest that keeps "
                                     "x/y voxels no coarser than z, BigStitcher's 'match z resolution (less)')")
    downsample_z: int = option(1, check=number(1, 8, integer=True), metavar="N", example="2",
                               help="downsampling in z (default 1)")
    intensity_range: tuple[float, float] | None = option(
        None, check=optional(_range), parse=parse_numbers, metavar="MIN,MAX", example="0,4000",
        help="intensities mapped to 0 and 1 (default: each view's minimum and maximum)")
    overlapping_only: bool = option(False, check=_flag,
                                    help="keep only points where the view overlaps a view of another tile or angle")
    max_detections: int | None = option(None, check=optional(number(1, integer=True)), parse=parse_whole,
                                        metavar="N", example="5000", help="keep the N strongest points per view")
    block: tuple[int, int, int] = option(
        (64, 96, 96), check=per_axis(number(8, integer=True)), parse=lambda text: parse_numbers(text, int),
        metavar="Z,Y,X", example="32,64,64",
        help="voxels per computed block, after downsampling (default 64,96,96, BigStitcher's)")

    @property
    def find_maxima(self) -> bool:
        return self.find in ("maxima", "both")

    @property
    def find_minima(self) -> bool:
        return self.find in ("minima", "both")

    def params(self) -> str:
        """The XML's ``params`` text, in BigStitcher's words (``DOG s=1.8 t=0.008 min=false max=true ...``)."""
        xy = 0 if self.downsample_xy == "auto" else self.downsample_xy
        lo, hi = ("NaN", "NaN") if self.intensity_range is None else map(repr, self.intensity_range)
        text = (f"DOG s={self.sigma!r} t={self.threshold!r} min={str(self.find_minima).lower()} "
                f"max={str(self.find_maxima).lower()} imageSigmaX=0.5 imageSigmaY=0.5 imageSigmaZ=0.5 "
                f"downsampleXYIndex={xy} downsampleZ={self.downsample_z} minIntensity={lo} maxIntensity={hi}")
        extras = []
        if self.localization != "quadratic":
            extras.append("localization=NONE")
        if self.overlapping_only:
            extras.append("overlappingOnly=true")
        if self.max_detections is not None:
            extras.append(f"maxDetections={self.max_detections}")
        return " ".join([text, *extras])


@dataclass(frozen=True)
class MatchingOptions(Options):
    """How to match interest points between views and which model they must agree on.

    Descriptors (BigStitcher's "fast descriptor-based" methods): each point is
    described by its nearest neighbours; ``rotation-invariant`` (geometric
    hashing: the neighbours in a local coordinate frame) for views at
    different angles, ``translation-invariant`` (the neighbours' offsets) for
    tiles of one angle; ``auto`` picks per pair.  Candidates must be
    ``ratio`` times closer in descriptor space to their match than to any
    other point.  RANSAC (seeded: the same input gives the same result) then
    keeps the candidates one ``model`` explains within ``ransac_error``
    world units; ``icp`` refines them with iterative closest points.

    Examples
    --------
    >>> from tilefuse.interestpoints import MatchingOptions
    >>> MatchingOptions().ransac_iterations
    10000
    """

    method: str = option("auto", choices=DESCRIPTORS, flag="--match-method", example="rotation-invariant",
                         help="descriptor matching: rotation-invariant (views at different angles), "
                              "translation-invariant (tiles), icp (no descriptors; needs a close start), or auto "
                              "(default: per pair)")
    model: str = option("affine", choices=MODELS, flag="--match-model", example="rigid",
                        help="transformation model of the matches and of the global solve (default affine)")
    regularize: str = option("rigid", choices=REGULARIZERS, example="none",
                             help="regularise the model towards this one (default rigid, BigStitcher's)")
    lambda_: float = option(0.1, check=number(0, 1), flag="--lambda", metavar="L", example="0.2",
                            help="weight of the regulariser (default 0.1)")
    neighbours: int = option(3, check=number(3, 8, integer=True), metavar="N", example="4",
                             help="neighbours per translation-invariant descriptor (default 3)")
    redundancy: int | None = option(None, check=optional(number(0, 4, integer=True)), parse=parse_whole,
                                    metavar="N", example="2",
                                    help="extra neighbours to choose descriptors from (default 1 "
                                         "translation-invariant, 0 rotation-invariant)")
    ratio: float | None = option(None, check=optional(number(1)), parse=parse_number, metavar="R", example="5",
                                 help="ratio of distance: how much closer the best candidate must be than the next "
                                      "(default 3 translation-invariant, 10 rotation-invariant)")
    ransac_error: float = option(5.0, check=number(0, lo_open=True), metavar="UNITS", example="3",
                                 help="RANSAC inlier threshold, world units (default 5)")
    ransac_iterations: int = option(10000, check=number(1, integer=True), metavar="N", example="1000",
                                    help="RANSAC iterations (default 10000)")
    min_inlier_ratio: float = option(0.1, check=number(0, 1), metavar="FRACTION", example="0.2",
                                     help="fewest inliers, a fraction of the candidates (default 0.1)")
    min_matches: int = option(12, check=number(1, integer=True), metavar="N", example="20",
                              help="fewest inliers for a pair to count (default 12)")
    icp: bool = option(False, check=_flag, help="refine each pair's inliers by iterative closest points")
    icp_distance: float = option(5.0, check=number(0, lo_open=True), metavar="UNITS", example="3",
                                 help="ICP: largest distance of a pair of closest points, world units (default 5)")
    icp_iterations: int = option(100, check=number(1, integer=True), metavar="N", example="50",
                                 help="ICP: most iterations (default 100)")
    all_pairs: bool = option(False, check=_flag,
                             help="match every pair of views, not only those that overlap under the current transforms")
    seed: int = option(0, check=number(0, integer=True), metavar="N", example="7",
                       help="RANSAC's random seed (the same seed gives the same result)")

    def descriptor_redundancy(self, method: str) -> int:
        """The redundancy used by ``method`` (BigStitcher's default when not given)."""
        if self.redundancy is not None:
            return self.redundancy
        return 0 if method == "rotation-invariant" else 1

    def descriptor_ratio(self, method: str) -> float:
        """The ratio of distance used by ``method`` (BigStitcher's default when not given)."""
        if self.ratio is not None:
            return self.ratio
        return 10.0 if method == "rotation-invariant" else 3.0

    def model_name(self) -> str:
        """The model as BigStitcher names it in the ViewTransform it writes."""
        names = {"translation": "TranslationModel3D", "rigid": "RigidModel3D", "affine": "AffineModel3D"}
        name = names[self.model]
        if self.regularizer() is not None:
            name += f" regularized with an {names[self.regularizer()]}, lambda = {self.lambda_!r}"
        return name

    def regularizer(self) -> str | None:
        """The model regularising ``model``, or None (only a simpler one regularises: rigid or translation)."""
        if self.regularize == "none" or self.lambda_ == 0:
            return None
        return self.regularize if MODELS.index(self.regularize) < MODELS.index(self.model) else None
