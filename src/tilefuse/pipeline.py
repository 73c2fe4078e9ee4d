"""End to end: open, register, save the registered XML, fuse, write — with a report."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from . import _storage
from ._options import Options, number, option, optional, parse_whole, text
from ._timing import StageTimer
from .errors import OptionError
from .fusion.api import plan_fusion
from .fusion.options import FusionOptions
from .intensity import IntensityOptions, IntensityResult, match_intensities
from .opening import open_project
from .project.project import Project
from .registration.api import RegistrationResult, register
from .registration.options import RegistrationOptions
from .writers._atomic import claim_outputs, input_paths
from .writers.fused import output_format, write_fused
from .writers.options import OutputOptions
from .writers.project import container_path

__all__ = ["ClusterOptions", "RunReport", "run", "run_outputs", "cluster_client"]

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    """What :func:`run` did: the registration, the output and the time per stage."""

    registration: RegistrationResult | None
    registered_xml: Path | None
    output: Path
    output_shape: tuple
    output_voxel_size: tuple
    timer: StageTimer = field(default_factory=StageTimer)
    intensity: IntensityResult | None = None
    #: The options each stage ran with (registration, intensity, fusion, writing).
    options: dict[str, Options] = field(default_factory=dict)

    def summary(self) -> str:
        lines = []
        changed = [f"{stage}: " + ", ".join(f"{k}={v}" for k, v in _non_default(opts).items())
                   for stage, opts in self.options.items() if _non_default(opts)]
        if changed:
            lines += ["options          " + "; ".join(changed)]
        if self.registration is not None:
            lines += ["registration", self.registration.summary()]
        if self.intensity is not None:
            lines += [f"intensities      {len(self.intensity.pairs)} overlaps matched, mismatch "
                      f"{self.intensity.mismatch_before:.4f} -> {self.intensity.mismatch_after:.4f}"]
        if self.registered_xml is not None:
            lines += [f"registered XML   {self.registered_xml}"]
        lines += [f"output           {self.output}",
                  f"output shape     {self.output_shape} (t, c, z, y, x)",
                  f"voxel size       {tuple(round(v, 4) for v in self.output_voxel_size)} (z, y, x)",
                  "time per stage", self.timer.report()]
        return "\n".join(lines)


def _non_default(options: Options) -> dict:
    """The fields of an options object that differ from the class's defaults, as plain values."""
    defaults = type(options)().as_dict()
    return {k: v for k, v in options.as_dict().items() if v != defaults.get(k)}


@dataclass(frozen=True)
class ClusterOptions(Options):
    """Where to compute: local threads (default), local worker processes, or a running cluster."""

    workers: int | None = option(None, check=optional(number(1, integer=True)), parse=parse_whole, metavar="N",
                                 example="2", help="start a local dask.distributed cluster with N worker processes")
    scheduler: str | None = option(None, check=optional(text), parse=str, metavar="ADDRESS",
                                   example="tcp://127.0.0.1:8786",
                                   help="address of a running dask.distributed scheduler")

    def _check_together(self) -> None:
        if self.workers is not None and self.scheduler is not None:
            raise OptionError("workers", "give workers or a scheduler, not both")


@contextlib.contextmanager
def cluster_client(scheduler: str | None = None, workers: int | None = None, threads_per_worker: int = 1):
    """A dask.distributed client: connect to ``scheduler`` or start ``workers`` local processes.

    Yields ``None`` when neither is given (the local threaded scheduler).  The
    client is *not* made dask's default scheduler: pass it to tilefuse's
    functions as ``client=``.  A local cluster tolerates
    :data:`tilefuse._compute.RETRIES` worker deaths per task; its nannies restart
    killed workers.  When the block ends with an exception (``KeyboardInterrupt``
    included) the cluster is closed quietly and the exception propagates.
    """
    if scheduler is None and not workers:
        yield None
        return
    from distributed import Client, LocalCluster

    from ._compute import RETRIES

    if scheduler is not None:
        client = Client(scheduler, set_as_default=False)
        with _closing(client):
            yield client
        return
    cluster = LocalCluster(n_workers=int(workers), threads_per_worker=threads_per_worker, processes=True,
                           dashboard_address=":0", scheduler_kwargs={"allowed_failures": RETRIES})
    try:
        client = Client(cluster, set_as_default=False)
        client.register_plugin(_local_worker_plugin())
    except BaseException:
        with _quiet_distributed():
            cluster.close()
        raise
    with _closing(client, cluster):
        yield client


def _local_worker_plugin():
    """A ``WorkerPlugin`` for the worker processes of a cluster started here (also after restarts)."""
    import logging
    import os
    import signal
    import threading

    from distributed.core import Status
    from distributed.diagnostics.plugin import WorkerPlugin

    closing = (Status.closing, Status.closing_gracefully, Status.closed)
    client_pid = os.getpid()  # pickled with the plugin: a worker in this process must not change it

    class LocalWorker(WorkerPlugin):
        name = "tilefuse-local-worker"
        idempotent = True

        def setup(self, worker):
            if os.getpid() == client_pid:
                return  # an in-process worker: the signal handling and logging are the caller's
            # Ctrl-C in a terminal reaches the whole process group, these workers included.  The client
            # process handles it (cancels the work, closes this cluster); a worker dying of it on its own
            # would print a traceback per process.
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)

            # A worker closed while it runs tasks warns about each task cut short and races its heartbeat
            # against the closing comms (tracebacks).  By then the run is over (finished, failed or
            # interrupted; the client process reports which) and the messages only bury the one that matters.
            def not_closing(record: logging.LogRecord) -> bool:
                return worker.status not in closing

            for handler in logging.getLogger("distributed").handlers + logging.getLogger().handlers:
                handler.addFilter(not_closing)

    return LocalWorker()


@contextlib.contextmanager
def _closing(*resources):
    """Close ``resources`` in order at the end of the block; quietly if the block failed."""
    try:
        yield
    except BaseException:
        # The run failed or was interrupted: closing the cluster now makes nannies, workers and comms
        # log warnings and tracebacks about the tasks cut short, which bury the one line that matters.
        with _quiet_distributed():
            for resource in resources:
                with contextlib.suppress(Exception):
                    resource.close()
        raise
    for resource in resources:
        resource.close()


@contextlib.contextmanager
def _quiet_distributed():
    """Silence the loggers of dask.distributed (and of the event loop under it) for the block."""
    import logging

    names = [name for name in list(logging.root.manager.loggerDict)
             if name.split(".")[0] in ("distributed", "tornado", "asyncio")]
    loggers = [logging.getLogger(name) for name in ["distributed", "tornado", "asyncio", *names]]
    before = [lg.disabled for lg in loggers]
    for lg in loggers:
        lg.disabled = True
    try:
        yield
    finally:
        for lg, disabled in zip(loggers, before):
            lg.disabled = disabled


def run_outputs(
    output: str | Path,
    *,
    registered_xml: str | Path | None = None,
    skip_registration: bool = False,
    match_intensity: bool = False,
    container: str = "hdf5",
) -> list[Path]:
    """Every file or folder :func:`run` writes with these arguments, the main output first.

    The output itself, the registered XML (unless nothing changes the
    project: ``skip_registration`` without ``match_intensity``) and, for a
    ``.xml`` output, its pixel container.
    """
    output = _storage.as_location(output)  # a URL (s3://...) stays one
    outputs = [output]
    if not skip_registration or match_intensity:
        stem = _storage.name(output).split(".")[0]
        outputs.append(_storage.as_location(registered_xml) if registered_xml
                       else _storage.join(_storage.parent(output), f"{stem}.registered.xml"))
    if output_format(output) == "bdv":
        outputs.append(container_path(output, container))
    return outputs


def run(
    project: Project | str | Path,
    output: str | Path,
    *,
    registration: RegistrationOptions | None = None,
    intensity: IntensityOptions | None = None,
    fusion: FusionOptions | None = None,
    writing: OutputOptions | None = None,
    detection=None,
    matching=None,
    skip_registration: bool = False,
    match_intensity: bool = False,
    registered_xml: str | Path | None = None,
    client=None,
    progress: bool = False,
) -> RunReport:
    """Register a project, save the registered XML beside the output, and fuse it.

    Each stage takes its own options (defaults when not given):
    ``registration`` (:class:`~tilefuse.registration.options.RegistrationOptions`),
    ``intensity`` (:class:`~tilefuse.intensity.IntensityOptions`, used with
    ``match_intensity``), ``fusion`` (:class:`~tilefuse.fusion.options.FusionOptions`)
    and ``writing`` (:class:`~tilefuse.writers.options.OutputOptions`: container,
    overwrite, resume, pyramid levels); ``detection`` and ``matching``
    (:mod:`tilefuse.interestpoints`) when views at several angles are
    registered with interest points (their points and correspondences are
    stored in the project's ``interestpoints.n5``).

    With ``match_intensity`` the tiles' intensities are matched after
    registration (:func:`tilefuse.intensity.match_intensities`) and fused
    with those adjustments.  The registered (and adjusted) XML goes to
    ``registered_xml`` (default: ``<output stem>.registered.xml`` beside the
    output); the input XML is never modified.

    Before any computation every output (:func:`run_outputs`) is checked:
    none may be, contain or lie inside an input (the XML or a file the loader
    reads) or another output, none may exist unless ``writing.overwrite``, and
    every output folder must be writable; otherwise a
    :class:`~tilefuse.errors.TilefuseError` (``OutputIsInputError``,
    ``OutputClashError``, ``OutputExistsError``, ``OutputError``) is raised at
    once.  The outputs stay locked against other runs until the function
    returns (``OutputBusyError`` if another run holds one).
    """
    registration = RegistrationOptions.build(registration)
    intensity_options = IntensityOptions.build(intensity)
    fusion = FusionOptions.build(fusion)
    writing = OutputOptions.build(writing)
    timer = StageTimer()
    timer.start("open")
    if not isinstance(project, Project):
        project = open_project(project)
    output = _storage.as_location(output)
    outputs = run_outputs(output, registered_xml=registered_xml, skip_registration=skip_registration,
                          match_intensity=match_intensity, container=writing.container)
    xml_out = outputs[1] if not skip_registration or match_intensity else None
    # Hours of registration and fusion must not end in "read-only file system" or "already exists".
    with claim_outputs(outputs, input_paths(project), overwrite=writing.overwrite):
        result = None
        stages = 1 + (not skip_registration) + bool(match_intensity)
        stage = 0
        if not skip_registration:
            stage += 1
            log.info("[%d/%d] registering %d views", stage, stages, len(project.views))
            timer.start("register")
            result = register(project, options=registration, detection=detection, matching=matching, client=client,
                              progress=progress)
            project = result.apply(project)
        matched = None
        if match_intensity:
            stage += 1
            log.info("[%d/%d] matching tile intensities over the overlaps", stage, stages)
            timer.start("match intensities")
            matched = match_intensities(project, options=intensity_options, progress=progress, client=client)
            project = matched.apply(project)
            fusion = fusion.replace(intensity_adjustment=True)
        if xml_out is not None:
            project.save(xml_out)
        timer.start("fuse + write")
        plan = plan_fusion(project, options=fusion)
        log.info("[%d/%d] fusing %dx%d volumes of %s voxels into %s", stages, stages, len(plan.timepoints),
                 len(plan.channels), " x ".join(map(str, plan.shape)), output)
        write_fused(plan, output, writing, progress=progress, client=client)
        timer.stop()
    shape = (len(plan.timepoints), len(plan.channels)) + tuple(plan.shape)
    used = {"registration": registration, "intensity": intensity_options, "fusion": fusion, "writing": writing}
    if result is not None and hasattr(result, "matches"):  # registered with interest points: their options too
        from .interestpoints.options import DetectionOptions

        used.update(detection=DetectionOptions.build(detection), matching=result.matches.options)
    if skip_registration:
        del used["registration"]
    if not match_intensity:
        del used["intensity"]
    return RunReport(result, xml_out, output, shape, plan.voxel_size, timer, matched, used)
