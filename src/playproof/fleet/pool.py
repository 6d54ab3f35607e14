"""The parent's side of the workers: start them, read their reports, tell them to stop.

Workers are spawned (not forked: the parent may hold threads and connections),
as daemons, so that none outlives the simulator; a worker whose parent dies
sees its pipe close and aborts by itself.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import cast

from playproof.fleet import worker
from playproof.fleet.progress import Progress, combine
from playproof.fleet.worker import WorkerPlan

log = logging.getLogger(__name__)

JOIN_S = 10.0


class WorkerPool:
    """The fleet's worker processes, seen as one."""

    def __init__(self, plans: list[WorkerPlan], on_report: Callable[[Progress], None]) -> None:
        self.plans = plans
        self.on_report = on_report
        self.latest: dict[int, Progress] = {p.index: Progress(worker=p.index) for p in plans}
        self._conns: dict[int, Connection] = {}
        self._procs: dict[int, BaseProcess] = {}
        self._done: set[int] = set()

    def start(self) -> None:
        """Spawn one process per plan and hand each its plan."""
        context = multiprocessing.get_context("spawn")
        for plan in self.plans:
            mine, theirs = context.Pipe()
            proc = context.Process(
                target=worker.main, args=(theirs,), name=f"fleet-{plan.index}", daemon=True
            )
            proc.start()
            theirs.close()
            mine.send(plan)
            self._conns[plan.index], self._procs[plan.index] = mine, proc

    @property
    def running(self) -> bool:
        """Whether some worker has not finished yet."""
        return len(self._done) < len(self.plans)

    def poll(self, timeout_s: float) -> None:
        """Read the reports that arrive within `timeout_s`."""
        live = {c: i for i, c in self._conns.items() if i not in self._done}
        for ready in wait(list(live), timeout_s):
            conn = cast(Connection, ready)
            index = live[conn]
            try:
                report: Progress = conn.recv()
            except (EOFError, OSError):
                self._lost(index)
                continue
            self.latest[index] = report
            self.on_report(report)
            if report.phase == "done":
                self._done.add(index)

    def _lost(self, index: int) -> None:
        self._done.add(index)
        code = self._procs[index].exitcode
        if code not in (0, None):
            log.error("fleet worker %d ended with exit code %s", index, code)

    def progress(self) -> Progress:
        """The whole fleet's latest progress."""
        return combine(list(self.latest.values()))

    def stop(self, abort: bool = False) -> None:
        """Ask every worker to stop (and drain, unless `abort`)."""
        for index, conn in self._conns.items():
            if index not in self._done:
                try:
                    conn.send("abort" if abort else "stop")
                except OSError:
                    self._lost(index)

    def close(self) -> None:
        """Wait for the workers to exit; terminate any that will not."""
        deadline = time.monotonic() + JOIN_S
        for proc in self._procs.values():
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                log.error("fleet worker %s did not exit; terminating it", proc.name)
                proc.terminate()
                proc.join(5)
        for conn in self._conns.values():
            conn.close()
