"""Wall time per named stage, for the end-of-run report of :func:`tilefuse.pipeline.run`."""

from __future__ import annotations

import time

__all__ = ["StageTimer"]


class StageTimer:
    """Wall time per named stage, for the end-of-run report."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self._t0 = time.perf_counter()
        self._name: str | None = None

    def start(self, name: str) -> None:
        self.stop()
        self._name, self._t0 = name, time.perf_counter()

    def stop(self) -> None:
        if self._name is not None:
            self.times[self._name] = self.times.get(self._name, 0.0) + time.perf_counter() - self._t0
            self._name = None

    def report(self) -> str:
        self.stop()
        total = sum(self.times.values())
        rows = [f"  {name:<22} {t:8.2f} s" for name, t in self.times.items()]
        return "\n".join(rows + [f"  {'total':<22} {total:8.2f} s"])
