"""Real parts for the device tests: a chrony NTP server and an Xvfb screen, on loopback.

Both are external programs. In CI (CI=true) a missing one fails the test; on a
developer's machine it skips with the reason and the install command.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import ntplib
import pytest

from playproof.device.clock import NtpServer
from tests.device.helpers import Service, free_udp_port
from tests.support import IN_CI


def require_program(name: str, package: str) -> str:
    """The program's path; fail in CI, skip elsewhere, when it is missing."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path:
        return path
    reason = f"{name} not found: install it with `apt-get install -y {package}` (make system-deps)"
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


CHRONY_CONF = """\
port {port}
bindaddress 127.0.0.1
allow 127.0.0.1
local stratum 8
cmdport 0
pidfile {dir}/chronyd.pid
driftfile {dir}/chrony.drift
"""


def _await_ntp(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chronyd exited with {proc.returncode}")
        try:
            ntplib.NTPClient().request("127.0.0.1", version=3, port=port, timeout=0.2)
            return
        except (ntplib.NTPException, OSError):
            time.sleep(0.1)
    raise RuntimeError("chronyd did not answer NTP requests in time")


@pytest.fixture(scope="session")
def chrony(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NtpServer]:
    """A chronyd serving NTP on a free loopback port; `-x`: it never touches the clock."""
    chronyd = require_program("chronyd", "chrony")
    folder = tmp_path_factory.mktemp("chrony")
    port = free_udp_port()
    conf = folder / "chrony.conf"
    conf.write_text(CHRONY_CONF.format(port=port, dir=folder))
    # -x: never touch the system clock; -U: allow a non-root user to run it.
    cmd = [chronyd, "-x", "-d", "-f", str(conf), *([] if os.geteuid() == 0 else ["-U"])]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _await_ntp(port, proc)
        yield NtpServer("127.0.0.1", port)
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def xvfb() -> Iterator[str]:
    """An Xvfb screen of 320x240 at 24 bits; yields its DISPLAY name."""
    binary = require_program("Xvfb", "xvfb")
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        [
            binary,
            "-displayfd",
            str(write_fd),
            "-screen",
            "0",
            "320x240x24",
            "-nolisten",
            "tcp",
            "-noreset",
        ],
        pass_fds=[write_fd],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as pipe:
            number = pipe.readline().strip()
        if not number:
            raise RuntimeError("Xvfb did not report its display number")
        yield f":{number}"
    finally:
        _stop(proc)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A fresh device data folder (not created: the SDK creates it)."""
    return tmp_path / "device"


@pytest.fixture
def service(db_url: str) -> Iterator[Service]:
    """A real `playproof serve` on a fixed port, which the test may stop and start again."""
    svc = Service(db_url)
    svc.start()
    try:
        yield svc
    finally:
        svc.kill()
