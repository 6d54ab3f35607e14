"""The demo's last step: the evidence export checked as a buyer would, with no database.

The export (`GET /v1/exports/evidence`) and the key log (`GET /v1/keys`) are fetched
from the running service into files beside the demo's database, then checked
offline by the same code as `playproof verify-evidence` (evidence.py): the key
log's chain, every record's checksum and signature, each key's window.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Final, NamedTuple

import httpx

from playproof import evidence, keylog

EVIDENCE_FILE: Final = Path("playproof.evidence.ndjson")
KEYLOG_FILE: Final = Path("playproof.keylog.json")
DAY_S: Final = 86_400
TIMEOUT_S: Final = 120.0


class Checked(NamedTuple):
    """What the offline check found, and the line that says so."""

    ok: bool
    line: str


def check(url: str, operator: str, ahead_days: int = 3) -> Checked:
    """Fetch the export of every play around now (a simulated clock runs ahead) and check it."""
    today = time.gmtime()
    start = time.strftime("%Y-%m-%d", time.gmtime(time.mktime(today) - DAY_S))
    end = time.strftime("%Y-%m-%d", time.gmtime(time.mktime(today) + ahead_days * DAY_S))
    headers = {"Authorization": f"Bearer {operator}"}
    with httpx.Client(base_url=url, headers=headers, timeout=TIMEOUT_S) as http:
        with (
            EVIDENCE_FILE.open("wb") as out,
            http.stream(
                "GET", "/v1/exports/evidence", params={"from": start, "to": end}
            ) as response,
        ):
            response.raise_for_status()
            for chunk in response.iter_bytes():
                out.write(chunk)
        keys = http.get("/v1/keys")
        keys.raise_for_status()
        KEYLOG_FILE.write_bytes(keys.content)
    with EVIDENCE_FILE.open("rb") as lines:
        report = evidence.verify(lines, keylog.parse_document(KEYLOG_FILE.read_bytes()))
    return Checked(report.ok, summary(report))


def summary(report: evidence.Report) -> str:
    """One paragraph: the counts, the chain, and how to check the files again by hand."""
    totals: Counter[str] = Counter()
    for counts in report.counts.values():
        totals.update(counts)
    shown = ", ".join(f"{n:,} {outcome}" for outcome, n in sorted(totals.items())) or "none"
    chain = "the key log's chain holds" if not report.chain else f"KEY LOG: {report.chain}"
    verdict = "confirmed" if report.ok else "FAILED"
    first = "".join(f"\n    line {n}: {o.device_id} {o.detail}" for n, o in report.failures[:5])
    return (
        f"  evidence {verdict} offline (as a buyer would): {shown} records of "
        f"{len(report.counts)} devices; {chain}.{first}\n"
        f"  check it yourself: playproof verify-evidence {EVIDENCE_FILE} --keys {KEYLOG_FILE}\n"
    )
