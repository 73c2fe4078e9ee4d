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

from .errors import OptionError, TilefuseError

__all__ = ["main"]

log = logging.getLogger("tilefuse")

# Prefixes of the argparse destinations of each options class (two classes may share a field name).
_REGISTRATION, _INTENSITY, _FUSION, _OUTPUT, _CLUSTER, _SAMPLE, _CONVERT = (
    "registration", "intensity", "fusion", "output", "cluster", "sample", "convert")
_DETECTION, _MATCHING = "detection", "matching"


def _option_classes():
    """The options classes, imported when the parser is built (not at ``import tilefuse.cli``)."""
    from .convert import ConvertOptions
    from .demo import SampleOptions
    from .fusion.options import FusionOptions
    from .intensity import IntensityOptions
    from .interestpoints.options import DetectionOptions, MatchingOptions
    from .pipeline import ClusterOptions
    from .registration.options import RegistrationOptions
    from .writers.options import OutputOptions

    return {_REGISTRATION: RegistrationOptions, _INTENSITY: IntensityOptions, _FUSION: FusionOptions,
            _OUTPUT: OutputOptions, _CLUSTER: ClusterOptions, _SAMPLE: SampleOptions, _CONVERT: ConvertOptions,
            _DETECTION: DetectionOptions, _MATCHING: MatchingOptions}


#: The options each subcommand takes, as (prefix, title of the --help group).
SUBCOMMAND_OPTIONS = {
    "demo": [(_SAMPLE, "sample"), (_CLUSTER, "parallelism")],
    "sample": [(_SAMPLE, "sample")],
    "info": [],
    "convert": [(_CONVERT, "project")],
    "detect": [(_DETECTION, "interest-point detection (DoG)"), (_CLUSTER, "parallelism")],
    "match": [(_MATCHING, "interest-point matching"), (_CLUSTER, "parallelism")],
    "register": [(_REGISTRATION, "registration"), (_DETECTION, "interest-point detection (views at several angles)"),
                 (_MATCHING, "interest-point matching and model (views at several angles)"),
                 (_CLUSTER, "parallelism")],
    "intensity": [(_INTENSITY, "intensity matching"), (_CLUSTER, "parallelism")],
    "fuse": [(_FUSION, "fusion"), (_OUTPUT, "output"), (_CLUSTER, "parallelism")],
    "run": [(_REGISTRATION, "registration"), (_DETECTION, "interest-point detection (views at several angles)"),
            (_MATCHING, "interest-point matching and model (views at several angles)"), (_FUSION, "fusion"),
            (_OUTPUT, "output"), (_CLUSTER, "parallelism")],
}


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=0, help="more messages (-vv: also the cluster's)")
    p.add_argument("-q", "--quiet", action="count", default=0,
                   help="print nothing but warnings and errors: no progress bar, no summary")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")


def _add_overwrite(p) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs (each is replaced only once its new version is complete)")


def _add_label(p) -> None:
    p.add_argument("--label", default="beads",
                   help="name of the interest points (default beads; register uses stored ones, else detects them)")


def _add_options(p: argparse.ArgumentParser, command: str) -> None:
    """The flags of the options classes ``command`` takes, and how to name their fields in errors."""
    from ._cliargs import add_options, flag_names

    classes = _option_classes()
    flags: dict[str, str] = {}
    for prefix, title in SUBCOMMAND_OPTIONS[command]:
        add_options(p, classes[prefix], title, prefix)
        for name, flag in flag_names(classes[prefix]).items():
            flags.setdefault(name, flag)
    p.set_defaults(flags=flags)


def _options(args, prefix: str, **fixed):
    """The options of one class as the command line gave them (see :func:`tilefuse._cliargs.options_from`)."""
    from ._cliargs import options_from

    return options_from(args, _option_classes()[prefix], prefix, **fixed)


def _say(args, text: str) -> None:
    """A result line on stdout, unless -q."""
    if not args.quiet:
        print(text)


def _location(text: str) -> Path | str:
    """A command-line path: a local ``Path``, or a URL (``s3://bucket/dataset.xml``) kept as it is."""
    from . import _storage

    return _storage.as_location(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tilefuse", description=__doc__.splitlines()[0])
    from . import __version__

    parser.add_argument("--version", action="version", version=f"tilefuse {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="generate a sample project, register and fuse it, score the result")
    p.add_argument("outdir", type=Path)
    _add_overwrite(p)

    p = sub.add_parser("sample", help="generate a sample project with known true tile positions")
    p.add_argument("outdir", type=Path)
    _add_overwrite(p)

    p = sub.add_parser("info", help="summarise a project")
    p.add_argument("xml", type=_location)
    p.add_argument("--plot", default=None, help="draw the tile layout to this PNG")
    p.add_argument("--views", action="store_true", help="one line per view")
    _add_overwrite(p)

    from .convert import CSV_HELP

    p = sub.add_parser(
        "convert", help="make a project from microscope files (CZI, OME-TIFF, ND2, LIF, TIFF) or TIFFs + positions",
        description="tilefuse convert FILE... -o dataset.xml: microscope files with their stage positions, "
                    "voxel size and channels (CZI, OME-TIFF, ND2, LIF, ImageJ/plain TIFF; a folder stands for the "
                    "files in it). tilefuse convert FOLDER POSITIONS -o dataset.xml: the TIFFs of FOLDER placed by "
                    "a positions file. " + CSV_HELP)
    p.add_argument("inputs", type=Path, nargs="+", metavar="FILE",
                   help="acquisition files (or folders of them), or a folder of TIFFs and its positions file")
    p.add_argument("-o", "--output", type=Path, required=True, help="project XML to write")
    _add_overwrite(p)

    p = sub.add_parser("detect", help="find interest points (DoG) in every view; stored in interestpoints.n5")
    p.add_argument("xml", type=Path)
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="XML referring to the points (default: overwrite the input, keeping a ~1 backup)")
    _add_label(p)
    _add_overwrite(p)

    p = sub.add_parser("match", help="match the interest points of overlapping views; stores the correspondences")
    p.add_argument("xml", type=Path)
    p.add_argument("--plot", default=None, help="draw the matched points to this PNG")
    _add_label(p)
    _add_overwrite(p)

    p = sub.add_parser("register", help="refine view positions (phase correlation for tiles, interest points for "
                                        "views at several angles) and solve globally")
    p.add_argument("xml", type=_location)
    p.add_argument("-o", "--output", type=_location, default=None,
                   help="registered XML (default: overwrite the input, keeping a ~1 backup)")
    p.add_argument("--plot", default=None, help="draw the link graph (interest points: the matched points) to this PNG")
    _add_label(p)
    _add_overwrite(p)

    p = sub.add_parser("intensity", help="match the views' intensities over their overlaps "
                                         "(<IntensityAdjustments>, applied by fuse --intensity-adjustment)")
    p.add_argument("xml", type=_location)
    p.add_argument("-o", "--output", type=_location, default=None,
                   help="XML with the adjustments (default: overwrite the input, keeping a ~1 backup)")
    _add_overwrite(p)

    p = sub.add_parser("fuse", help="fuse the views into one volume (OME-Zarr, TIFF or BDV project)")
    p.add_argument("xml", type=_location)
    p.add_argument("output", type=_location, help="out.ome.zarr, out.tif or out.xml")
    p.add_argument("--preview", default=None, help="also save a downsampled PNG picture of the result")

    p = sub.add_parser("run", help="register, then fuse; writes the registered XML beside the output")
    p.add_argument("xml", type=_location)
    p.add_argument("output", type=_location)
    p.add_argument("--no-register", action="store_true", help="fuse the current registration only")
    p.add_argument("--match-intensity", action="store_true",
                   help="after registering, match the tiles' intensities (see 'tilefuse intensity', with its "
                        "defaults) and fuse with those adjustments")
    p.add_argument("--preview", default=None, help="also save a downsampled PNG picture of the result")

    for command, p in sub.choices.items():
        _add_options(p, command)
        _add_common(p)
    return parser


def _client(args):
    from .pipeline import cluster_client

    cluster = _options(args, _CLUSTER)
    if cluster.scheduler is not None or cluster.workers:
        import distributed  # noqa: F401 - importing it sets its loggers to INFO

        # Its loggers propagate to the handler set up in main(): keep them to warnings (errors with -q)
        # unless -vv asks for the cluster's chatter.
        level = logging.INFO if args.verbose >= 2 else logging.WARNING
        logging.getLogger("distributed").setLevel(max(level, logging.getLogger().level))
    return cluster_client(cluster.scheduler, cluster.workers)


def _preview(args, path, out, overwrite: bool) -> None:
    """Save a PNG: the middle z plane of the first (t, c) at the coarsest written level."""
    import zarr

    from . import _storage
    from .plotting import save_preview

    path = _storage.as_location(path)
    if str(path).endswith(".zarr"):
        group = zarr.open_group(_storage.zarr_store(path, read_only=True) if _storage.is_url(path) else str(path),
                                mode="r")
        attrs = group.attrs.asdict()
        datasets = (attrs.get("ome") or attrs)["multiscales"][0]["datasets"]  # NGFF 0.5 (under "ome") or 0.4
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
    _say(args, f"preview          {out}")


def _outputs(args, outputs, inputs=(), *, overwrite: bool | None = None, in_place=()):
    """Claim every output of a command before any work (see ``claim_outputs``).

    All of them at once: checked against the inputs and against each other,
    refused if they exist unless ``--overwrite``, their folders writable, and
    locked against another run until the command ends.
    """
    from .writers._atomic import claim_outputs

    return claim_outputs(outputs, inputs, overwrite=args.overwrite if overwrite is None else overwrite,
                         in_place=in_place)


def _cmd_info(args) -> None:
    from .opening import open_project
    from .project.summary import project_summary
    from .writers._atomic import input_paths

    project = open_project(args.xml)
    with _outputs(args, [args.plot], input_paths(project)):
        _say(args, project_summary(project, detail=2 if args.views else 1))
        if args.plot:
            from .plotting import plot_layout

            _say(args, f"layout plot      {plot_layout(project, args.plot, overwrite=args.overwrite)}")


def _cmd_sample(args):
    from .demo import make_sample_project, sample_outputs

    options = _options(args, _SAMPLE)
    with _outputs(args, sample_outputs(args.outdir, options.format)):
        project = make_sample_project(args.outdir, options, progress=args.progress, overwrite=args.overwrite)
    _say(args, f"wrote {project.path} ({len(project.views)} views) and {args.outdir / 'truth.json'}")
    return project


def _cmd_convert(args) -> None:
    from .convert import convert_files, convert_tiffs
    from .formats.acquisition import is_acquisition_file
    from .project.summary import project_summary
    from .writers.project import container_path

    options = _options(args, _CONVERT)
    inputs = list(args.inputs)
    tables = len(inputs) == 2 and inputs[0].is_dir() and not inputs[1].is_dir() and not is_acquisition_file(inputs[1])
    outputs = [args.output] if options.in_place else [args.output, container_path(args.output, options.format)]
    if tables:
        # The TIFFs are inputs too; convert_tiffs checks the outputs against them once it has read the positions.
        with _outputs(args, outputs, [inputs[1]]):
            project = convert_tiffs(inputs[0], inputs[1], args.output, options, progress=args.progress,
                                    overwrite=args.overwrite)
    else:
        files = []
        for path in inputs:
            files.extend(sorted(p for p in path.iterdir() if is_acquisition_file(p)) if path.is_dir() else [path])
        with _outputs(args, outputs, files):
            project = convert_files(files, args.output, options, progress=args.progress, overwrite=args.overwrite)
    _say(args, project_summary(project, detail=0))


def _cmd_register(args) -> None:
    from .opening import open_project
    from .registration.api import register
    from .writers._atomic import input_paths

    options = _options(args, _REGISTRATION)
    detection, matching = _options(args, _DETECTION), _options(args, _MATCHING)
    project = open_project(args.xml)
    out = args.output or args.xml
    # The XML may replace the input XML (with backups; the input's pixels never); the plot may not.
    with _outputs(args, [out, args.plot], input_paths(project, xml=False), in_place=[args.xml]):
        with _client(args) as client:
            result = register(project, options=options, detection=detection, matching=matching, label=args.label,
                              client=client, progress=args.progress)
        _say(args, result.summary())
        points = hasattr(result, "matches")  # registered with interest points
        if points:
            result.apply(project, overwrite=args.overwrite).save(out)
            _say(args, f"points           {_container(project)} (label {args.label!r}: points and correspondences)")
        else:
            result.apply(project).save(out)
        _say(args, f"registered XML   {out}")
        if args.plot:
            from .plotting import plot_links, plot_matches

            if points:
                plot = plot_matches(project, result.matches, args.plot, overwrite=args.overwrite)
            else:
                plot = plot_links(project, result.links, args.plot, result.groups, overwrite=args.overwrite)
            _say(args, f"{'match plot' if points else 'link plot':<17}{plot}")


def _container(project) -> str:
    from .interestpoints.storage import container_path

    return str(container_path(project))


def _cmd_detect(args) -> None:
    from .interestpoints.detection import check_replaceable, detect
    from .opening import open_project
    from .writers._atomic import input_paths

    options = _options(args, _DETECTION)
    project = open_project(args.xml)
    out = args.output or args.xml
    with _outputs(args, [out], input_paths(project, xml=False), in_place=[args.xml]):  # see _cmd_register
        if not args.overwrite:  # refuse before the detection, not after it
            check_replaceable(project, [v for v in project.views if v not in project.missing_views], args.label,
                              options)
        with _client(args) as client:
            found = detect(project, options=options, label=args.label, client=client, progress=args.progress)
        _say(args, found.summary())
        found.apply(project, overwrite=args.overwrite).save(out)
    _say(args, f"points           {_container(project)}")
    _say(args, f"XML              {out}")


def _cmd_match(args) -> None:
    from .interestpoints.matching import match
    from .opening import open_project
    from .writers._atomic import input_paths

    options = _options(args, _MATCHING)
    project = open_project(args.xml)
    with _outputs(args, [args.plot], input_paths(project)):
        with _client(args) as client:
            found = match(project, options=options, label=args.label, client=client, progress=args.progress)
        _say(args, found.summary())
        found.save(project, overwrite=args.overwrite)
        _say(args, f"correspondences  {_container(project)} (label {args.label!r})")
        if args.plot:
            from .plotting import plot_matches

            _say(args, f"match plot       {plot_matches(project, found, args.plot, overwrite=args.overwrite)}")


def _cmd_intensity(args) -> None:
    from .intensity import match_intensities
    from .opening import open_project
    from .writers._atomic import input_paths

    options = _options(args, _INTENSITY)
    project = open_project(args.xml)
    out = args.output or args.xml
    with _outputs(args, [out], input_paths(project, xml=False), in_place=[args.xml]):  # see _cmd_register
        with _client(args) as client:
            result = match_intensities(project, options=options, progress=args.progress, client=client)
        gains = [a for a, _ in result.models.values()]
        _say(args, f"pairs            {len(result.pairs)} overlaps matched")
        _say(args, f"gains            min {min(gains):.3f}, max {max(gains):.3f}")
        _say(args, f"mismatch         {result.mismatch_before:.4f} -> {result.mismatch_after:.4f} "
                   "(mean |difference| of matched quantiles / median intensity)")
        result.apply(project).save(out)
    _say(args, f"adjusted XML     {out}  (fuse with --intensity-adjustment)")


def _cmd_fuse(args) -> None:
    from .fusion.api import plan_fusion
    from .opening import open_project
    from .writers._atomic import input_paths
    from .writers.fused import output_format, write_fused
    from .writers.project import container_path

    fusion, writing = _options(args, _FUSION), _options(args, _OUTPUT)
    project = open_project(args.xml)
    outputs = [args.output, args.preview]
    if output_format(args.output) == "bdv":
        outputs.append(container_path(args.output, writing.container))
    with _outputs(args, outputs, input_paths(project), overwrite=writing.overwrite):  # before any work
        plan = plan_fusion(project, options=fusion)
        _say(args, f"output           {len(plan.timepoints)} timepoints × {len(plan.channels)} channels × "
                   f"{' × '.join(map(str, plan.shape))} (z, y, x), voxel "
                   f"{tuple(round(v, 4) for v in plan.voxel_size)} {plan.unit}")
        with _client(args) as client:
            out = write_fused(plan, args.output, writing, progress=args.progress, client=client)
        _say(args, f"wrote            {out}")
        if args.preview:
            _preview(args, out, args.preview, writing.overwrite)


def _cmd_run(args) -> None:
    from .opening import open_project
    from .pipeline import run, run_outputs
    from .writers._atomic import input_paths

    registration, fusion, writing = _options(args, _REGISTRATION), _options(args, _FUSION), _options(args, _OUTPUT)
    detection, matching = _options(args, _DETECTION), _options(args, _MATCHING)
    project = open_project(args.xml)
    outputs = run_outputs(args.output, skip_registration=args.no_register, match_intensity=args.match_intensity,
                          container=writing.container)
    with _outputs(args, [*outputs, args.preview], input_paths(project), overwrite=writing.overwrite):
        with _client(args) as client:
            report = run(project, args.output, registration=registration, fusion=fusion, writing=writing,
                         detection=detection, matching=matching, skip_registration=args.no_register,
                         match_intensity=args.match_intensity, client=client, progress=args.progress)
        _say(args, report.summary())
        if args.preview:
            _preview(args, report.output, args.preview, writing.overwrite)


def _cmd_demo(args) -> None:
    from .demo import make_sample_project, sample_outputs, score_registration
    from .pipeline import run, run_outputs
    from .project.summary import project_summary
    from .writers.options import OutputOptions

    sample = _options(args, _SAMPLE)
    outdir = args.outdir
    fused, registered, preview = outdir / "fused.ome.zarr", outdir / "registered.xml", outdir / "fused.png"
    outputs = [*sample_outputs(outdir, sample.format), *run_outputs(fused, registered_xml=registered), preview]
    # A second demo into the same folder stops here, before any work, unless --overwrite.
    with _outputs(args, outputs):
        _say(args, f"generating a {sample.ndim}D sample project in {outdir} ...")
        project = make_sample_project(outdir, sample, progress=args.progress, overwrite=args.overwrite)
        _say(args, project_summary(project, detail=1))
        before = score_registration(project, outdir / "truth.json")
        with _client(args) as client:
            report = run(project, fused, writing=OutputOptions(overwrite=args.overwrite, resume="never"),
                         client=client, progress=args.progress, registered_xml=registered)
        _say(args, report.summary())
        from .opening import open_project

        after = score_registration(open_project(registered), outdir / "truth.json")
        _say(args, f"tile position error vs truth (world px, global translation removed):\n"
                   f"  stage positions  mean {before['mean']:.3f}  max {before['max']:.3f}\n"
                   f"  registered       mean {after['mean']:.3f}  max {after['max']:.3f}")
        _preview(args, report.output, preview, args.overwrite)


COMMANDS = {"info": _cmd_info, "sample": _cmd_sample, "convert": _cmd_convert, "register": _cmd_register,
            "detect": _cmd_detect, "match": _cmd_match,
            "intensity": _cmd_intensity,
            "fuse": _cmd_fuse, "run": _cmd_run, "demo": _cmd_demo}


class _MessageFormatter(logging.Formatter):
    """Plain messages for information, ``warning: ...`` for warnings and errors."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


#: Readers whose own log messages are details: tilefuse reports what they mean (a damaged file) itself.
_READER_LOGGERS = ("tifffile",)


def _log_to_stderr(verbose: int, quiet: int) -> list[tuple[logging.Logger, logging.Handler]]:
    """Show the library's messages: information by default, warnings only with -q, details with -v.

    The readers' own warnings (tifffile's ``<TiffTag.fromfile> raised TiffFileError(...)`` about a damaged
    file, twice per open) reached stderr raw through Python's last-resort handler, beside tilefuse's own
    error about the same file; they are shown with -v only, named after the reader.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_MessageFormatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO - 10 * verbose + 10 * quiet)
    log.propagate = False  # the command line is the application: no second copy through the root logger
    installed = [(log, handler)]
    for name in _READER_LOGGERS:
        reader = logging.getLogger(name)
        detail = logging.StreamHandler(sys.stderr)
        detail.setFormatter(logging.Formatter(f"{name}: %(message)s"))
        detail.setLevel(logging.DEBUG if verbose else logging.CRITICAL + 1)
        reader.addHandler(detail)
        reader.propagate = False
        installed.append((reader, detail))
    return installed


def _stop_logging(installed: list[tuple[logging.Logger, logging.Handler]]) -> None:
    for logger, handler in installed:
        logger.removeHandler(handler)
        if logger is not log:
            logger.propagate = True


def _finished() -> None:
    """Ignore Ctrl-C from now on: the command has finished (its outputs are complete or keep their
    .partial names) and only the interpreter's teardown is left.

    Python restores SIGINT's default action before it tears down its modules (~0.5 s with dask,
    distributed and h5py loaded): a Ctrl-C then killed a finished run with status -2 and no word.
    SIG_IGN is the one disposition Python leaves in place, and it holds for every thread (blocking
    the signal in the main thread would not: any other thread may receive it).
    """
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    Without ``argv`` (the ``tilefuse`` command, ``python -m tilefuse.cli``) this is the process:
    once the command has finished, Ctrl-C is ignored for the rest of it (see :func:`_finished`).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = _log_to_stderr(args.verbose, args.quiet)
    args.progress = args.quiet == 0  # a bar on the command line unless -q
    try:
        try:
            COMMANDS[args.command](args)
        finally:
            if argv is None:
                _finished()
    except OptionError as exc:  # a bad value found past argparse (across fields, or by a stage): name the flag
        if args.debug:
            traceback.print_exc()
        flag = args.flags.get(exc.option, exc.option)
        print(f"tilefuse {args.command}: error: {flag}: {exc.reason}", file=sys.stderr)
        return 2
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
        _stop_logging(handlers)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
