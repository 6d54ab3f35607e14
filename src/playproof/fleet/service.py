"""`playproof serve` as a child process, for the demo and the benchmark.

It runs in a session of its own, so that Ctrl-C in the terminal reaches the
simulator alone (which then drains the fleet against a service still up), and
it is asked to die with its parent, so that it never outlives the demo. Its
log goes to a file; `start` returns once it answers.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Final

from playproof.errors import ConfigError

READY: Final = re.compile(rb"playproof serving on (http://\S+)")
METRICS: Final = re.compile(rb"playproof metrics on (http://\S+)")  # with --metrics-listen
PR_SET_PDEATHSIG: Final = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux; elsewhere nothing)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class ServiceProcess:
    """A `playproof serve` child: `start`, read `url`, `stop`."""

    def __init__(
        self, db_url: str, port: int, log_file: Path, *extra: str, sim_clock: str | None = None
    ) -> None:
        self.args = ["--db", db_url, "--port", str(port), "--log-level", "warning", *extra]
        if sim_clock is not None:
            self.args += ["--sim-clock", sim_clock]
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.metrics_url = ""  # set when started with --metrics-listen
        self._ready = threading.Event()

    @property
    def pid(self) -> int:
        """The process id."""
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = 60.0) -> str:
        """Start the service and return its URL once it serves; ConfigError if it cannot."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "playproof", "serve", *self.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._ready.wait(timeout_s) or not self.url:
            self.stop()
            tail = self.log_file.read_text(errors="replace")[-2000:]
            raise ConfigError(f"the service did not start; its log ({self.log_file}):\n{tail}")
        return self.url

    def _pump(self) -> None:
        """Copy the service's stderr to its log file, noting when it serves."""
        assert self.proc is not None and self.proc.stderr is not None
        with self.log_file.open("ab") as log:
            for line in self.proc.stderr:
                log.write(line)
                log.flush()
                metrics = METRICS.search(line)
                if metrics:
                    self.metrics_url = metrics.group(1).decode()
                found = READY.search(line)
                if found and not self._ready.is_set():
                    self.url = found.group(1).decode()
                    self._ready.set()
        self._ready.set()  # it ended: whoever waits stops waiting

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL if it will not go; its exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return proc.returncode
