"""`playproof demo` (what `make demo` runs): a thin wrapper over the fleet demo.

The service on the embedded SQLite default (./playproof.db) on a 10x simulated
clock, a live fleet of simulated screens with a few faults, and the
reconciliation at the end; see `playproof.fleet.demo` and docs/fleet.md.
"""

from __future__ import annotations


def run(
    port: int = 8787,
    *,
    devices: int = 50,
    duration: str = "10m",
    speed: float = 10.0,
    seed: int = 1,
) -> int:
    """Run the fleet demo; the exit code (0 clean, 1 when a play was lost or counted twice)."""
    from playproof.fleet.demo import run_demo

    return run_demo(port, devices=devices, duration=duration, speed=speed, seed=seed)
