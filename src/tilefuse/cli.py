"""The ``tilefuse`` command line: a thin layer over the public API.

Each subcommand parses its options and calls one library function.  Errors
of type :class:`~tilefuse.errors.TilefuseError` (bad input) are printed as
one paragraph and exit with status 2; any other exception is a bug or an
input no check caught: one paragraph too, status 1.  ``--debug`` adds the
traceback.  Messages from the library's loggers go to stderr (``-q`` keeps
only warnings, ``-v`` adds details).  Tests call :func:`main` with a list of
arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path

from .errors import TilefuseError

__all__ = ["main"]

log = logging.getLogger("tilefuse")


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.replace("x", ",").split(",") if v)


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.replace("x", ",").split(",") if v)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=0, help="more messages")
    p.add_argument("-q", "--quiet", action="count", default=0, help="fewer messages, no progress bar")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}")
    return value


def _add_cluster(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("parallelism")
    g.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                   help="start a local dask.distributed cluster with N worker processes")
    g.add_argument("--scheduler", default=None, help="address of a running dask.distributed scheduler")


def _add_register_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("registration")
    g.add_argument("--channel", default=None, help="register on this channel (id or name); default: average")
    g.add_argument("--all-timepoints-together", action="store_true",
                   help="one registration for all timepoints (default: each timepoint on its own)")
    g.add_argument("--downsampling", type=_ints, default=None,
                   help="z,y,x downsampling of the overlap crops (default: 1,1,1 in 2D; 1,2,2 in 3D "
                        "unless an overlap is narrower than 40 voxels)")
    g.add_argument("--min-overlap", type=float, default=0.05, help="minimum overlap fraction of a pair")
    g.add_argument("--neighbours-only", action="store_true", help="only face neighbours, no diagonal pairs")
    g.add_argument("--peaks", type=int, default=5, help="phase-correlation peaks to check (default 5)")
    g.add_argument("--refine", choices=("translation", "rigid", "affine"), default=None,
                   help="also refine every pair with SimpleITK (normalised correlation)")
    g.add_argument("--model", choices=("translation", "rigid", "affine"), default="translation",
                   help="global model per tile (rigid/affine: best with --refine rigid/affine)")
    g.add_argument("--preset", choices=("strict", "relaxed", "none"), default="relaxed",
                   help="link rejection thresholds (BigStitcher's presets; default relaxed)")
    g.add_argument("--rel-threshold", type=float, default=None)
    g.add_argument("--abs-threshold", type=float, default=None)
    g.add_argument("--min-correlation", type=float, default=0.3, help="reject links below (default 0.3)")
    g.add_argument("--max-shift", type=float, default=None, help="reject links moving a tile more (world units)")


def _register_options(args) -> dict:
    group_by = ("tile", "angle") if args.all_timepoints_together else ("timepoint", "tile", "angle")
    return dict(channel=args.channel, group_by=group_by, downsampling=args.downsampling or "auto", min_overlap=args.min_overlap,
                neighbours_only=args.neighbours_only, n_peaks=args.peaks, refine=args.refine, preset=args.preset,
                rel_threshold=args.rel_threshold, abs_threshold=args.abs_threshold,
                min_correlation=args.min_correlation, max_shift=args.max_shift, model=args.model)


def _add_fusion_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("fusion")
    g.add_argument("--bounding-box", default=None, help="name of a <BoundingBoxDefinition> in the XML")
    g.add_argument("--downsample", type=_floats, default=(1.0,),
                   help="output downsampling, one number or z,y,x (default 1)")
    g.add_argument("--isotropic", action="store_true",
                   help="resample z to the xy spacing (default: keep the data's anisotropy)")
    g.add_argument("--blending", choices=("cosine", "average", "max", "first"), default="cosine")
    g.add_argument("--blend-range", type=float, default=40.0, help="cosine ramp width, world units (40)")
    g.add_argument("--blend-border", type=float, default=0.0, help="blending border, world units (0)")
    g.add_argument("--interpolation", choices=("linear", "nearest"), default="linear")
    g.add_argument("--dtype", default=None, help="output type (default: the input's, clipped)")
    g.add_argument("--chunks", type=_ints, default=None, help="output chunk shape z,y,x")
    g.add_argument("--intensity-adjustment", action="store_true",
                   help="apply the project's <IntensityAdjustments>")
    g.add_argument("--content-based", action="store_true",
                   help="weigh views by local contrast too (BigStitcher's content-based fusion)")
    g.add_argument("--container", choices=("hdf5", "n5", "zarr"), default="hdf5",
                   help="pixel container when the output is a .xml project")
    _add_overwrite(g)
    resume = g.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true",
                        help="require that a partial output left by an interrupted run is continued: refuse if "
                             "it was made from other inputs or options (default: continue it if it matches, "
                             "else start over)")
    resume.add_argument("--no-resume", action="store_true", help="start over instead of resuming a partial output")
    g.add_argument("--preview", default=None, help="also save a downsampled PNG picture of the result")


def _add_overwrite(p) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs (each is replaced only once its new version is complete)")


def _resume_mode(args) -> str:
    return "require" if args.resume else "never" if args.no_resume else "auto"


def _fusion_options(args) -> dict:
    ds = args.downsample[0] if len(args.downsample) == 1 else args.downsample
    return dict(bounding_box=args.bounding_box, downsampling=ds, preserve_anisotropy=not args.isotropic,
                blending=args.blending, blend_range=args.blend_range, blend_border=args.blend_border,
                interpolation=args.interpolation, dtype=args.dtype, chunks=args.chunks,
                intensity_adjustment=args.intensity_adjustment, content_based=args.content_based)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tilefuse", description=__doc__.splitlines()[0])
    from . import __version__

    parser.add_argument("--version", action="version", version=f"tilefuse {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="generate a sample project, register and fuse it, score the result")
    p.add_argument("outdir", type=Path)
    p.add_argument("--3d", dest="three_d", action="store_true", help="a 3D anisotropic sample")
    p.add_argument("--grid", type=_ints, default=None, help="tiles per axis, e.g. 3,4 (2D) or 1,2,2 (3D)")
    p.add_argument("--tile", type=_ints, default=None, help="tile shape, e.g. 512,512 or 64,256,256")
    p.add_argument("--seed", type=int, default=0)
    _add_overwrite(p)
    _add_common(p)
    _add_cluster(p)

    p = sub.add_parser("sample", help="generate a sample project with known true tile positions")
    p.add_argument("outdir", type=Path)
    p.add_argument("--3d", dest="three_d", action="store_true")
    p.add_argument("--grid", type=_ints, default=None)
    p.add_argument("--tile", type=_ints, default=None)
    p.add_argument("--overlap", type=float, default=0.1)
    p.add_argument("--max-offset", type=float, default=8.0, help="largest stage error, world units")
    p.add_argument("--empty-tiles", type=_ints, default=(), help="tile indices holding only background")
    p.add_argument("--texture", choices=("procedural", "photo"), default="procedural")
    p.add_argument("--format", choices=("hdf5", "n5", "zarr", "tiff"), default="hdf5")
    p.add_argument("--seed", type=int, default=0)
    _add_overwrite(p)
    _add_common(p)

    p = sub.add_parser("info", help="summarise a project")
    p.add_argument("xml", type=Path)
    p.add_argument("--plot", default=None, help="draw the tile layout to this PNG")
    p.add_argument("--views", action="store_true", help="one line per view")
    _add_overwrite(p)
    _add_common(p)

    p = sub.add_parser("convert", help="make a project from a folder of TIFFs and positions")
    p.add_argument("folder", type=Path, help="folder holding the TIFF files")
    p.add_argument("positions", type=Path, help="CSV (file,x,y[,z]) or Fiji TileConfiguration.txt")
    p.add_argument("-o", "--output", type=Path, required=True, help="project XML to write")
    p.add_argument("--voxel-size", type=_floats, default=(1.0, 1.0, 1.0), help="z,y,x voxel size (or y,x)")
    p.add_argument("--unit", default="µm")
    p.add_argument("--position-unit", choices=("physical", "voxel"), default=None,
                   help="units of the positions (default: voxel for TileConfiguration, physical for CSV)")
    p.add_argument("--format", choices=("hdf5", "n5", "zarr", "tiff"), default="hdf5")
    p.add_argument("--chunks", type=_ints, default=None, help="block shape z,y,x")
    _add_overwrite(p)
    _add_common(p)

    p = sub.add_parser("register", help="refine tile positions (phase correlation + global solve)")
    p.add_argument("xml", type=Path)
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="registered XML (default: overwrite the input, keeping a ~1 backup)")
    p.add_argument("--plot", default=None, help="draw the link graph to this PNG")
    _add_overwrite(p)
    _add_register_options(p)
    _add_common(p)
    _add_cluster(p)

    p = sub.add_parser("intensity", help="match the views' intensities over their overlaps "
                                         "(<IntensityAdjustments>, applied by fuse --intensity-adjustment)")
    p.add_argument("xml", type=Path)
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="XML with the adjustments (default: overwrite the input, keeping a ~1 backup)")
    p.add_argument("--model", choices=("affine", "gain"), default="affine",
                   help="a*I + b per view (default), or a*I")
    p.add_argument("--downsample", type=float, default=4.0,
                   help="grid spacing of the overlap samples, world units (4)")
    _add_overwrite(p)
    _add_common(p)

    p = sub.add_parser("fuse", help="fuse the views into one volume (OME-Zarr, TIFF or BDV project)")
    p.add_argument("xml", type=Path)
    p.add_argument("output", type=Path, help="out.ome.zarr, out.tif or out.xml")
    _add_fusion_options(p)
    _add_common(p)
    _add_cluster(p)

    p = sub.add_parser("run", help="register, then fuse; writes the registered XML beside the output")
    p.add_argument("xml", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--no-register", action="store_true", help="fuse the current registration only")
    p.add_argument("--match-intensity", action="store_true",
                   help="after registering, match the tiles' intensities (see 'tilefuse intensity') and fuse "
                        "with those adjustments")
    _add_register_options(p)
    _add_fusion_options(p)
    _add_common(p)
    _add_cluster(p)
    return parser


def _client(args):
    from .pipeline import cluster_client

    scheduler, workers = getattr(args, "scheduler", None), getattr(args, "workers", None)
    if scheduler is not None or workers:
        import distributed  # noqa: F401 - importing it sets its loggers to INFO

        # Its loggers propagate to the handler set up in main(): keep them to warnings (errors with -q)
        # unless -vv asks for the cluster's chatter.
        level = logging.INFO if args.verbose >= 2 else logging.WARNING
        logging.getLogger("distributed").setLevel(max(level, logging.getLogger().level))
    return cluster_client(scheduler, workers)


def _preview(plan_or_path, out, overwrite: bool) -> None:
    """Save a PNG: the middle z plane of the first (t, c) at the coarsest written level."""
    from .plotting import save_preview

    import zarr

    path = Path(plan_or_path)
    if str(path).endswith(".zarr"):
        group = zarr.open_group(str(path), mode="r")
        datasets = group.attrs["multiscales"][0]["datasets"]
        arr = group[datasets[min(len(datasets) - 1, 2)]["path"]]
        while arr.ndim > 2:
            arr = arr[arr.shape[0] // 2] if arr.ndim == 3 else arr[0]
        save_preview(arr, out, overwrite=overwrite)
    else:
        import tifffile

        image = tifffile.imread(path)
        while image.ndim > 2:
            image = image[image.shape[0] // 2]
        save_preview(image, out, overwrite=overwrite)
    print(f"preview          {out}")


def _outputs(args, outputs, inputs=(), *, in_place=()):
    """Claim every output of a command before any work (see ``claim_outputs``).

    All of them at once: checked against the inputs and against each other,
    refused if they exist unless ``--overwrite``, their folders writable, and
    locked against another run until the command ends.
    """
    from .writers._atomic import claim_outputs

    return claim_outputs(outputs, inputs, overwrite=args.overwrite, in_place=in_place)


def _cmd_info(args) -> None:
    from .project import open_project
    from .project.summary import project_summary
    from .writers._atomic import input_paths

    project = open_project(args.xml)
    with _outputs(args, [args.plot], input_paths(project)):
        print(project_summary(project, detail=2 if args.views else 1))
        if args.plot:
            from .plotting import plot_layout

            print(f"layout plot      {plot_layout(project, args.plot, overwrite=args.overwrite)}")


def _cmd_sample(args):
    from .demo import make_sample_project, sample_outputs

    with _outputs(args, sample_outputs(args.outdir, args.format)):
        project = make_sample_project(args.outdir, ndim=3 if args.three_d else 2, grid=args.grid,
                                      tile_shape=args.tile, overlap=args.overlap, max_offset=args.max_offset,
                                      empty_tiles=args.empty_tiles, texture=args.texture, format=args.format,
                                      seed=args.seed, progress=args.progress, overwrite=args.overwrite)
    print(f"wrote {project.path} ({len(project.views)} views) and {args.outdir / 'truth.json'}")
    return project


def _cmd_convert(args) -> None:
    from .convert import convert_tiffs
    from .project.summary import project_summary
    from .writers.project import container_path

    vs = args.voxel_size if len(args.voxel_size) == 3 else (1.0,) + tuple(args.voxel_size)
    # The TIFFs are inputs too; convert_tiffs checks the outputs against them once it has read the positions.
    with _outputs(args, [args.output, container_path(args.output, args.format)], [args.positions]):
        project = convert_tiffs(args.folder, args.positions, args.output, voxel_size=vs, unit=args.unit,
                                position_unit=args.position_unit, format=args.format, chunks=args.chunks,
                                progress=args.progress, overwrite=args.overwrite)
    print(project_summary(project, detail=0))


def _cmd_register(args) -> None:
    from .project import open_project
    from .registration.api import register
    from .writers._atomic import input_paths

    project = open_project(args.xml)
    out = args.output or args.xml
    # The XML may replace the input XML (with backups; the input's pixels never); the plot may not.
    with _outputs(args, [out, args.plot], input_paths(project, xml=False), in_place=[args.xml]):
        with _client(args) as client:
            result = register(project, client=client, progress=args.progress, **_register_options(args))
        print(result.summary())
        result.apply(project).save(out)
        print(f"registered XML   {out}")
        if args.plot:
            from .plotting import plot_links

            plot = plot_links(project, result.links, args.plot, result.groups, overwrite=args.overwrite)
            print(f"link plot        {plot}")


def _cmd_intensity(args) -> None:
    from .intensity import match_intensities
    from .project import open_project
    from .writers._atomic import input_paths

    project = open_project(args.xml)
    out = args.output or args.xml
    with _outputs(args, [out], input_paths(project, xml=False), in_place=[args.xml]):  # see _cmd_register
        result = match_intensities(project, model=args.model, downsampling=args.downsample,
                                   progress=args.progress)
        gains = [a for a, _ in result.models.values()]
        print(f"pairs            {len(result.pairs)} overlaps matched")
        print(f"gains            min {min(gains):.3f}, max {max(gains):.3f}")
        print(f"mismatch         {result.mismatch_before:.4f} -> {result.mismatch_after:.4f} "
              "(mean |difference| of matched quantiles / median intensity)")
        result.apply(project).save(out)
    print(f"adjusted XML     {out}  (fuse with --intensity-adjustment)")


def _cmd_fuse(args) -> None:
    from .fusion.api import plan_fusion
    from .project import open_project
    from .writers._atomic import input_paths
    from .writers.fused import output_format, write_fused
    from .writers.project import container_path

    project = open_project(args.xml)
    outputs = [args.output, args.preview]
    if output_format(args.output) == "bdv":
        outputs.append(container_path(args.output, args.container))
    with _outputs(args, outputs, input_paths(project)):  # before any work
        plan = plan_fusion(project, **_fusion_options(args))
        print(f"output           {len(plan.timepoints)} timepoints × {len(plan.channels)} channels × "
              f"{' × '.join(map(str, plan.shape))} (z, y, x), voxel {tuple(round(v, 4) for v in plan.voxel_size)}"
              f" {plan.unit}")
        with _client(args) as client:
            out = write_fused(plan, args.output, container=args.container, progress=args.progress,
                              resume=_resume_mode(args), overwrite=args.overwrite, client=client)
        print(f"wrote            {out}")
        if args.preview:
            _preview(out, args.preview, args.overwrite)


def _cmd_run(args) -> None:
    from .pipeline import run, run_outputs
    from .project import open_project
    from .writers._atomic import input_paths

    project = open_project(args.xml)
    outputs = run_outputs(args.output, skip_registration=args.no_register, match_intensity=args.match_intensity)
    with _outputs(args, [*outputs, args.preview], input_paths(project)):
        with _client(args) as client:
            report = run(project, args.output, register_options=_register_options(args),
                         fusion_options=_fusion_options(args), skip_registration=args.no_register,
                         match_intensity=args.match_intensity,
                         client=client, progress=args.progress, overwrite=args.overwrite,
                         resume=_resume_mode(args))
        print(report.summary())
        if args.preview:
            _preview(report.output, args.preview, args.overwrite)


def _cmd_demo(args) -> None:
    from .demo import make_sample_project, sample_outputs, score_registration
    from .pipeline import run, run_outputs
    from .project.summary import project_summary

    outdir = args.outdir
    ndim = 3 if args.three_d else 2
    fused, registered, preview = outdir / "fused.ome.zarr", outdir / "registered.xml", outdir / "fused.png"
    outputs = [*sample_outputs(outdir), *run_outputs(fused, registered_xml=registered), preview]
    # A second demo into the same folder stops here, before any work, unless --overwrite.
    with _outputs(args, outputs):
        print(f"generating a {ndim}D sample project in {outdir} ...")
        project = make_sample_project(outdir, ndim=ndim, grid=args.grid, tile_shape=args.tile,
                                      empty_tiles=(), seed=args.seed, progress=args.progress,
                                      overwrite=args.overwrite)
        print(project_summary(project, detail=1))
        before = score_registration(project, outdir / "truth.json")
        with _client(args) as client:
            report = run(project, fused, client=client, progress=args.progress, overwrite=args.overwrite,
                         resume=False, registered_xml=registered)
        print(report.summary())
        from .project import open_project

        after = score_registration(open_project(registered), outdir / "truth.json")
        print(f"tile position error vs truth (world px, global translation removed):\n"
              f"  stage positions  mean {before['mean']:.3f}  max {before['max']:.3f}\n"
              f"  registered       mean {after['mean']:.3f}  max {after['max']:.3f}")
        _preview(report.output, preview, args.overwrite)


COMMANDS = {"info": _cmd_info, "sample": _cmd_sample, "convert": _cmd_convert, "register": _cmd_register,
            "intensity": _cmd_intensity,
            "fuse": _cmd_fuse, "run": _cmd_run, "demo": _cmd_demo}


class _MessageFormatter(logging.Formatter):
    """Plain messages for information, ``warning: ...`` for warnings and errors."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


def _log_to_stderr(verbose: int, quiet: int) -> logging.Handler:
    """Show the library's messages: information by default, warnings only with -q, details with -v."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_MessageFormatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO - 10 * verbose + 10 * quiet)
    log.propagate = False  # the command line is the application: no second copy through the root logger
    return handler


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = _log_to_stderr(args.verbose, args.quiet)
    args.progress = args.quiet == 0  # a bar on the command line unless -q
    try:
        COMMANDS[args.command](args)
    except TilefuseError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"tilefuse {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tilefuse {args.command}: interrupted; partial outputs keep their .partial names",
              file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `tilefuse info x.xml | head`: the reader has gone, nothing to report
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python flushes stdout again at exit
        return 0
    except Exception as exc:  # a bug, or damage no check recognised: still one paragraph, no traceback
        if args.debug:
            traceback.print_exc()
        print(f"tilefuse {args.command}: internal error: {type(exc).__name__}: {exc}\n"
              f"  This is a bug in tilefuse or damage it does not recognise; an output it was writing keeps "
              f"its .partial name. Run again with --debug for the traceback and please report it.", file=sys.stderr)
        return 1
    finally:
        log.removeHandler(handler)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
