"""Times every garbage collection of a `playproof serve` started with this folder on PYTHONPATH.

    PLAYPROOF_GC_PROBE=base PYTHONPATH=bench/gc_probe \
        .venv/bin/python bench/ingest.py --scenario paced --paced-seconds 15
    sort -k2 -n -r /tmp/playproof-gc-*.txt | head      # generation, pause in ms

`PLAYPROOF_GC_PROBE=tuned` also freezes what exists 3 s after start and raises the
generation-0 threshold to 50,000 (the variant BENCHMARKS.md reports as not kept).
Python imports `sitecustomize` at start-up; only a `serve` process is probed, and
the pauses are written every 10 s to /tmp/playproof-gc-<mode>-<pid>.txt, and the
number of objects the collector tracks to the same name ending `.objects`.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time

MODE = os.environ.get("PLAYPROOF_GC_PROBE", "")


def _probe() -> None:
    pauses: list[tuple[int, float]] = []
    started = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append((info["generation"], time.perf_counter() - started[0]))

    def freeze_later() -> None:
        time.sleep(3)
        gc.collect()
        gc.freeze()

    def write_out() -> None:
        while True:
            time.sleep(10)
            path = f"/tmp/playproof-gc-{MODE}-{os.getpid()}.txt"
            with open(path, "w", encoding="utf-8") as out:
                out.writelines(f"{g} {s * 1000:.3f}\n" for g, s in list(pauses))
            with open(path.replace(".txt", ".objects"), "a", encoding="utf-8") as out:
                out.write(f"{len(gc.get_objects())}\n")  # objects the collector tracks

    gc.callbacks.append(timed)
    if MODE == "tuned":
        gc.set_threshold(50_000, 50, 1000)
        threading.Thread(target=freeze_later, daemon=True).start()
    threading.Thread(target=write_out, daemon=True).start()


if MODE and "serve" in sys.argv:
    _probe()
