"""Ctrl-C after a command has finished: the run's status, never a silent death by SIGINT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import tilefuse


def test_ctrl_c_during_the_interpreters_teardown_keeps_the_status(tmp_path):
    # Python restores SIGINT's default before it tears its modules down (~0.5 s with dask loaded): Ctrl-C
    # there killed a finished run with -2 and no message.  A __del__ run by that teardown sends the signal
    # at exactly that moment.
    out = tmp_path / "s"
    code = textwrap.dedent(f"""
        import os, signal, sys
        from tilefuse.cli import main

        class CtrlCAtTeardown:
            def __del__(self):
                os.kill(os.getpid(), signal.SIGINT)

        late = CtrlCAtTeardown()
        sys.argv = ["tilefuse", "sample", {str(out)!r}, "--grid", "1,2", "--tile", "32,32", "-q"]
        sys.exit(main())
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(tilefuse.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    # SIGINT at its default in the child, as in a terminal (the suite's process may ignore it).
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert (out / "dataset.xml").is_file()  # the finished work is there, complete
