"""Shared helpers for the benchmark scripts (not part of the tilefuse package).

* every measured configuration runs in a fresh subprocess (:func:`run_child`):
  the parent reads the child's peak RSS from ``os.wait4`` (``ru_maxrss`` of the
  child and its reaped descendants: the largest single process) and, at the
  same time, samples the RSS of the whole process tree with psutil every
  50 ms (the sum over processes; what matters with dask.distributed workers);
* sample projects are generated once per work directory and re-used
  (:func:`sample_project`, :func:`truth_project`); generation is never timed;
* small printing / JSON helpers and a description of the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_WORKDIR = Path("/tmp/tfbench")


# ----------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------
def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small data, ~1-2 minutes")
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    p.add_argument("--workdir", default=str(DEFAULT_WORKDIR),
                   help="where generated data and outputs go (default /tmp/tfbench); never the repo")
    p.add_argument("--no-peer", action="store_true", help="skip multiview-stitcher even if installed")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one measured task
    return p


def check_workdir(workdir: str | Path) -> Path:
    workdir = Path(workdir).resolve()
    repo = HERE.parent
    if workdir == repo or repo in workdir.parents:
        sys.exit(f"--workdir {workdir} is inside the repository; choose a directory outside it")
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def peer_available(name: str = "multiview-stitcher") -> bool:
    """Whether the peer package ``name`` is installed."""
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


# ----------------------------------------------------------------------------
# the machine
# ----------------------------------------------------------------------------
def machine_info() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                info["cpu_model"] = value.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import psutil

        info["ram_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    versions = {}
    for pkg in ("tilefuse", "numpy", "scipy", "dask", "distributed", "zarr", "h5py", "scikit-image", "numba",
                "multiview-stitcher", "xarray", "ashlar"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    info["versions"] = versions
    return info


def print_machine(info: dict) -> None:
    v = ", ".join(f"{k} {val}" for k, val in info["versions"].items())
    print(f"machine: {info.get('cpu_model', '?')}, {info['cpus']} cores, {info.get('ram_gb', '?')} GB RAM, "
          f"Python {info['python']}")
    print(f"packages: {v}")


# ----------------------------------------------------------------------------
# measured subprocesses
# ----------------------------------------------------------------------------
class _TreeSampler(threading.Thread):
    """Peak of the summed RSS of a process and all its descendants (psutil, 50 ms)."""

    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak = pid, interval, 0
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            import psutil

            root = psutil.Process(self.pid)
        except Exception:  # psutil missing or the process already gone
            return
        while not self._halt.is_set():
            total = 0
            try:
                procs = [root] + root.children(recursive=True)
            except Exception:
                break
            for p in procs:
                try:
                    total += p.memory_info().rss
                except Exception:
                    pass
            self.peak = max(self.peak, total)
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def run_child(script: str | Path, task: dict, *, timeout: float | None = None, quiet: bool = True,
              prefix: list[str] | None = None, python: str | None = None) -> dict:
    """Run ``python script --child <task json>`` in a fresh process and measure it.

    The child writes its result (a JSON dict) to the file named by
    ``task["result_path"]``.  Returns that dict plus ``peak_rss_mb`` (from
    ``os.wait4``: largest single process, child or its reaped descendants)
    and ``peak_tree_rss_mb`` (psutil sampling: summed RSS of the whole process
    tree; sampled, so short spikes can be missed) and ``wall_s`` (the child's
    whole life, including imports).  ``python``: another interpreter (a peer
    whose pinned dependencies cannot share this environment).
    """
    fd, result_path = tempfile.mkstemp(suffix=".json", prefix="tfbench-")
    os.close(fd)
    task = dict(task, result_path=result_path)
    cmd = list(prefix or []) + [python or sys.executable, str(script), "--child", json.dumps(task)]
    t0 = time.perf_counter()
    stdout = subprocess.DEVNULL if quiet else None
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True)
    sampler = _TreeSampler(proc.pid)
    sampler.start()
    stderr_chunks: list[str] = []
    reader = threading.Thread(target=lambda: stderr_chunks.append(proc.stderr.read()), daemon=True)
    reader.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    status, usage = None, None
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if deadline is not None and time.monotonic() > deadline:
            proc.kill()
            _, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    sampler.stop()
    reader.join(timeout=5)
    stderr = "".join(stderr_chunks)
    try:
        result = json.loads(Path(result_path).read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        result = {}
    finally:
        Path(result_path).unlink(missing_ok=True)
    if proc.returncode != 0 or "error" in result:
        timed_out = deadline is not None and time.monotonic() > deadline
        result.setdefault("error", "timed out" if timed_out else f"exit code {proc.returncode}")
        result["stderr_tail"] = stderr[-3000:]
        print(f"  !! {task.get('name', task.get('kind'))}: {result['error']}", file=sys.stderr)
        print("     " + stderr[-1500:].replace("\n", "\n     "), file=sys.stderr)
    result["peak_rss_mb"] = usage.ru_maxrss / 1024.0  # Linux: kB
    result["peak_tree_rss_mb"] = sampler.peak / 2**20
    result["wall_s"] = wall
    return result


def start(parser: argparse.ArgumentParser, tasks: dict) -> tuple[argparse.Namespace, Path, str, dict]:
    """Every script's opening: parse; as a child run the task and exit; else check the
    work directory and print the machine.  Returns ``(args, workdir, size, machine info)``."""
    args = parser.parse_args()
    if args.child:
        child_main(tasks)  # exits
    workdir = check_workdir(args.workdir)
    info = machine_info()
    print_machine(info)
    return args, workdir, "quick" if args.quick else "full", info


def child_main(tasks: dict) -> None:
    """Entry point of a child: run ``tasks[task["kind"]](task)`` and write its result."""
    task = json.loads(sys.argv[sys.argv.index("--child") + 1])
    out = Path(task["result_path"])
    try:
        result = tasks[task["kind"]](task)
    except Exception as exc:  # report, do not hide
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"}
    out.write_text(json.dumps(result, default=_json_default))
    sys.exit(0 if "error" not in result else 1)


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


# ----------------------------------------------------------------------------
# sample data (generated once per work directory, never timed)
# ----------------------------------------------------------------------------
def _generate(task: dict) -> dict:
    """Child task: write one sample project (keeps the parent process small)."""
    import numpy as np

    if task["how"] == "sample":
        from tilefuse.demo import make_sample_project

        make_sample_project(task["outdir"], **task["kwargs"])
        return {}
    import tilefuse
    from tilefuse.sample_data import make_mosaic

    kw = dict(task["kwargs"])
    fmt_ = kw.pop("fmt", "hdf5")
    mosaic = make_mosaic(**kw)
    min_res = min(mosaic.voxel_size)
    vs = tuple(mosaic.voxel_size)
    if mosaic.ndim == 2:
        vs = (1.0,) + vs
    outdir = Path(task["outdir"])
    tilefuse.write_project(outdir / "dataset.xml", [mosaic.tile_dask(i) for i in range(mosaic.n_tiles)],
                           np.asarray(mosaic.true_positions) * min_res, voxel_size=vs, format=fmt_)
    mosaic.save_truth(outdir / "truth.json")
    return {}


def _cached_project(workdir: Path, name: str, how: str, kwargs: dict) -> Path:
    outdir = workdir / "data" / name
    stamp = outdir / "params.json"
    want = json.dumps(dict(kwargs, _how=how), sort_keys=True, default=str)
    if stamp.exists() and stamp.read_text() == want and (outdir / "dataset.xml").exists():
        return outdir / "dataset.xml"
    if outdir.exists():
        shutil.rmtree(outdir)
    outdir.mkdir(parents=True)
    t0 = time.perf_counter()
    print(f"  generating {name} ...", end="", flush=True)
    r = run_child(Path(__file__), {"kind": "generate", "how": how, "outdir": str(outdir), "kwargs": kwargs,
                                   "name": f"generate {name}"})
    if "error" in r:
        sys.exit(f"could not generate {name}: {r['error']}")
    stamp.write_text(want)
    print(f" {time.perf_counter() - t0:.0f} s")
    return outdir / "dataset.xml"


#: the generation parameters shared by the scripts (so they share generated data)
COMMON = dict(overlap=0.1, max_offset=8.0, format="hdf5", seed=0)


def dataset_name(kw: dict) -> str:
    """A directory name derived from the generation parameters."""
    parts = [f"{kw.get('ndim', 2)}d", kw.get("texture", "procedural"), "x".join(map(str, kw["grid"])),
             "x".join(map(str, kw.get("tile_shape", ()))), kw.get("format", "hdf5"), f"s{kw.get('seed', 0)}"]
    if kw.get("empty_tiles"):
        parts.append("e" + "-".join(map(str, kw["empty_tiles"])))
    return "_".join(parts)


def sample_project(workdir: Path, name: str | None = None, **kwargs) -> Path:
    """``make_sample_project(workdir/data/name, **kwargs)`` unless an identical one exists.

    Generated in a subprocess (never timed); a ``params.json`` stamp records
    the arguments and a different stamp regenerates the data.  Returns the
    path of ``dataset.xml``.
    """
    return _cached_project(workdir, name or dataset_name(kwargs), "sample", kwargs)


def truth_project(workdir: Path, name: str, **kwargs) -> Path:
    """A project written at the mosaic's TRUE positions (``make_mosaic(**kwargs)``), plus ``truth.json``."""
    return _cached_project(workdir, name, "truth", kwargs)


# ----------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------
def fmt(value, spec: str = ".2f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:
            return "nan"
        return format(value, spec)
    return str(value)


def print_table(title: str, columns: list[tuple[str, str, str]], rows: list[dict]) -> None:
    """Print ``rows`` as a markdown table; ``columns`` are (key, header, format spec)."""
    print(f"\n{title}\n")
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        cells.append([fmt(row.get(k), spec) for k, _, spec in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for n, r in enumerate(cells):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def write_json(path: str | None, doc: dict) -> None:
    if not path:
        return
    Path(path).write_text(json.dumps(doc, indent=1, default=_json_default))
    print(f"\nwrote {path}")


# ----------------------------------------------------------------------------
# multiview-stitcher input built from a tilefuse project
# ----------------------------------------------------------------------------
def peer_sims(project, *, chunks=None, transform_key: str = "stage"):
    """One multiview-stitcher SpatialImage per view, from the project's own arrays.

    As multiview-stitcher's quickstart does: ``si_utils.get_sim_from_array``
    with the view's physical voxel size as ``scale`` and its physical
    position (world position x finest voxel size) as ``translation`` under
    ``transform_key``.  The arrays are the project's lazy dask arrays (the
    same file blocks tilefuse reads).  2D projects give ``(y, x)`` images.
    Only translated, axis-aligned views are supported (what the samples are).
    """
    import numpy as np
    from multiview_stitcher import spatial_image_utils as si_utils

    ndim = project.ndim
    dims = ["z", "y", "x"][-ndim:]
    vs_all = [project.voxel_size(v) for v in project.views]
    min_res = min(min(vs) for vs in vs_all)
    sims = []
    for view, vs in zip(project.views, vs_all):
        model = project.model(view)
        data = project.image(view, chunks=chunks)
        if ndim == 2:
            data = data[0]
        position = model[:-1, -1] * min_res  # physical position of voxel 0 (zyx)
        vs = np.asarray(vs, dtype=float)
        sims.append(si_utils.get_sim_from_array(
            data, dims=dims,
            scale={d: float(s) for d, s in zip(dims, vs[-ndim:])},
            translation={d: float(t) for d, t in zip(dims, position[-ndim:])},
            transform_key=transform_key,
        ))
    return sims, min_res


if __name__ == "__main__":
    child_main({"generate": _generate})


def summarize_pyspy(raw_path: str | Path, top: int = 20) -> str:
    """Self and inclusive sample shares per function from a ``py-spy record -f raw`` file."""
    from collections import Counter

    self_c, incl_c, total = Counter(), Counter(), 0
    for line in Path(raw_path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].split("/")[-1] + ")"
                  if " (" in f else f for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        self_c[frames[-1]] += n
        for f in set(frames):
            incl_c[f] += n
    lines = [f"py-spy: {total} samples (all threads; idle threads show as waiting in lock/queue calls)",
             "self %   function (file)"]
    lines += [f"{100 * n / total:6.1f}   {f}" for f, n in self_c.most_common(top)]
    lines += ["incl %   function (file)"]
    lines += [f"{100 * n / total:6.1f}   {f}" for f, n in incl_c.most_common(top)]
    return "\n".join(lines)
