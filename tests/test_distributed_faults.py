"""Faults on a dask.distributed cluster: killed workers, workers gone for good, Ctrl-C, global state.

Every test builds its own small project and its own cluster of worker
processes, kills what it needs to kill, and bounds every wait, so a
regression to the old behaviour (hanging forever in ``Client.gather``)
fails the test instead of hanging the suite.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import tilefuse
from tilefuse._compute import compute, worker_timeout_seconds
from tilefuse.demo import make_sample_project
from tilefuse.errors import TilefuseError, WorkerLostError
from tilefuse.pipeline import cluster_client

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")
zarr = pytest.importorskip("zarr")

CHUNKS = (64, 64)  # 34 chunks over the pyramid: a few seconds on 2 workers, long enough to kill mid-run


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_sample_project(tmp_path_factory.mktemp("faults") / "p", ndim=2, grid=(2, 3),
                               tile_shape=(128, 128), overlap=0.2, seed=11, factors=[(1, 1, 1)])


def _chunks_written(folder: Path, name: str) -> int:
    """Zarr chunk or shard files (plain numbers; a shard being appended to: ``<n>.partial``) under ``name``
    or its partial output in ``folder``."""
    return sum(1 for p in folder.glob(f"{name}*/**/*") if p.is_file() and p.name.removesuffix(".partial").isdigit())


def _wait_for(condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def _in_thread(func) -> tuple[threading.Thread, dict]:
    """Run ``func`` in a daemon thread (a hang cannot block the suite); its result or error in the dict."""
    outcome: dict = {}

    def target():
        try:
            outcome["result"] = func()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def _kill(pids) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def test_both_workers_killed_once_run_completes_with_exact_output(project, tmp_path):
    plan = tilefuse.plan_fusion(project, chunks=CHUNKS)
    expected = plan.to_dask().compute(scheduler="threads")[:, :, 0]  # 2D is written as (t, c, y, x)
    out = tmp_path / "f.ome.zarr"
    with cluster_client(workers=2) as client:
        pids = client.run(os.getpid)
        thread, outcome = _in_thread(lambda: tilefuse.write_fused(plan, out, client=client))
        _wait_for(lambda: _chunks_written(tmp_path, out.name) > 0, 60, "the first chunk")
        _kill(pids.values())
        killed_mid_run = thread.is_alive()
        thread.join(90)
        assert not thread.is_alive(), "write_fused hangs after both workers were killed"
        assert "error" not in outcome, outcome.get("error")
        # The nannies started two new worker processes (a client in dask's config made this impossible).
        restarted = client.run(os.getpid)
        assert len(restarted) == 2 and not set(restarted.values()) & set(pids.values())
    assert killed_mid_run
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["0"][...], expected)


def test_workers_gone_for_good_raise_worker_lost_within_the_timeout(project, tmp_path, monkeypatch):
    monkeypatch.setenv("TILEFUSE_WORKER_TIMEOUT", "2")
    plan = tilefuse.plan_fusion(project, chunks=CHUNKS)
    out = tmp_path / "f.ome.zarr"
    with cluster_client(workers=2) as client:
        pids = client.run(os.getpid)
        thread, outcome = _in_thread(lambda: tilefuse.write_fused(plan, out, client=client))
        _wait_for(lambda: _chunks_written(tmp_path, out.name) > 0, 60, "the first chunk")
        for nanny in client.cluster.workers.values():
            nanny.close_gracefully()  # the nannies will not restart their workers
        _kill(pids.values())
        killed = time.monotonic()
        thread.join(30)
        waited = time.monotonic() - killed
        assert not thread.is_alive(), "write_fused hangs with no worker left"
    error = outcome.get("error")
    assert isinstance(error, WorkerLostError), repr(error)
    assert isinstance(error, TilefuseError) and isinstance(error, RuntimeError)
    assert 2 <= waited < 2 + 5  # the timeout, plus a poll and the cancellation
    message = str(error)
    for address in pids:
        assert address in message
    assert "within 2 s" in message and "TILEFUSE_WORKER_TIMEOUT" in message
    assert not out.exists()  # the partial output is not renamed into place


def test_no_worker_ever_connected_is_bounded():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as client:
        started = time.monotonic()
        thread, outcome = _in_thread(lambda: compute(dask.delayed(sum)([1, 2]), client=client, worker_timeout=1))
        thread.join(10)
        assert not thread.is_alive(), "compute waits forever for a worker"
        assert time.monotonic() - started < 1 + 3
    assert isinstance(outcome.get("error"), WorkerLostError), outcome
    assert f"no dask worker connected to {cluster.scheduler_address} within 1 s" in str(outcome["error"])


def test_task_that_kills_its_workers_raises_worker_lost(monkeypatch):
    monkeypatch.setattr("tilefuse._compute.RETRIES", 0)  # the cluster gives up after the first death
    with cluster_client(workers=1) as client:
        with pytest.raises(WorkerLostError, match="dask workers that all died"):
            compute(dask.delayed(os._exit, pure=True)(3), client=client, worker_timeout=30)


def test_task_errors_keep_their_type_on_a_cluster():
    with cluster_client(workers=1) as client:
        with pytest.raises(ZeroDivisionError):
            compute(dask.delayed(lambda: 1 / 0)(), client=client, retries=1)
        assert compute(dask.delayed(sum)([1, 2]), 5, client=client) == (3, 5)


def test_worker_timeout_setting(monkeypatch):
    monkeypatch.delenv("TILEFUSE_WORKER_TIMEOUT", raising=False)
    assert worker_timeout_seconds() == 60.0
    assert worker_timeout_seconds(2.5) == 2.5
    monkeypatch.setenv("TILEFUSE_WORKER_TIMEOUT", "7")
    assert worker_timeout_seconds() == 7.0
    for bad in ("soon", "0", "-1", "nan"):
        monkeypatch.setenv("TILEFUSE_WORKER_TIMEOUT", bad)
        with pytest.raises(TilefuseError, match="TILEFUSE_WORKER_TIMEOUT"):
            worker_timeout_seconds()
    with pytest.raises(ValueError, match="worker_timeout"):
        worker_timeout_seconds(0)


def test_ctrl_c_under_workers_prints_one_line(project, tmp_path):
    out = tmp_path / "f.ome.zarr"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(tilefuse.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    # Small chunks: ~300 tasks, so that the run is still going when Ctrl-C comes after the first chunk
    # (with 64-px chunks the sharded writer finished the 20 chunks before the signal arrived, under load).
    command = [sys.executable, "-m", "tilefuse.cli", "fuse", str(project.path), str(out), "-q",
               "--chunks", "1,16,16", "--workers", "2"]
    # A session of its own: SIGINT to its process group is what Ctrl-C in a terminal does.
    # SIGINT at its default in the child: a process that ignores it passes that on through exec, and the
    # suite's own process may ignore it after an in-process cluster ran the local-worker plugin's setup.
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        _wait_for(lambda: _chunks_written(tmp_path, out.name) > 0 or proc.poll() is not None, 60,
                  "the first chunk")
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines() == [
        "tilefuse fuse: interrupted; partial outputs keep their .partial names"], stderr
    assert not out.exists()


def _global_config() -> dict:
    """dask's global configuration, less distributed's own section (it registers a dashboard route
    in it when a scheduler starts without bokeh)."""
    return copy.deepcopy({k: v for k, v in dask.config.config.items() if k != "distributed"})


def test_no_global_scheduler_state(project, tmp_path):
    plan = tilefuse.plan_fusion(project, chunks=(128, 128))
    before = _global_config()
    assert "scheduler" not in before and "shuffle" not in before
    seen = set()
    with cluster_client(workers=1) as client:
        assert _global_config() == before
        with pytest.raises(ValueError):
            distributed.default_client()
        # Sample the global scheduler while the work runs: a temporary dask.config.set is not allowed either.
        thread, outcome = _in_thread(lambda: tilefuse.write_fused(plan, tmp_path / "f.ome.zarr", client=client))
        while thread.is_alive():
            seen.add(str(dask.config.get("scheduler", None)))
            time.sleep(0.002)
        assert "error" not in outcome, outcome.get("error")
        assert _global_config() == before
    assert seen == {"None"}
    assert _global_config() == before
    with pytest.raises(ValueError):
        distributed.default_client()


def test_the_worker_plugin_leaves_the_client_process_alone():
    # A worker running in the client's own process (an in-process cluster) ran the plugin's setup in the
    # main thread and set SIGINT to SIG_IGN there: Ctrl-C did nothing after such a run (found as a flaky test).
    import signal
    import types

    from tilefuse.pipeline import _local_worker_plugin

    before = signal.getsignal(signal.SIGINT)
    _local_worker_plugin().setup(types.SimpleNamespace(status=None))
    assert signal.getsignal(signal.SIGINT) is before
