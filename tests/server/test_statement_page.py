"""The printable billing statement, as a buyer gets it: Chromium's PDF of the page.

A real server holds two suppliers' plays, some failed with a proof screenshot,
and a reference image for each content. The page (`/statement.html`) reads the
API with the dashboard's token; Debian's Chromium, driven by Playwright, prints
it to PDF, and pypdf reads the PDF back: one page per supplier, each with the
statement's digest, its period and status, and its failures shown beside the
content's reference.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from pypdf import PdfReader

from playproof.rules import HOUR_MS
from playproof.server.formats import rfc3339
from tests.server import test_dashboard as dashboard
from tests.server.reporting import operator_token, post_records, upload_png
from tests.server.test_billing import SCREENS, catalog, records, settle
from tests.support import ServerProcess, client, now_ms, png, provision

SUPPLIERS = {"scr-bill-1": "sup-e", "scr-bill-2": "sup-j"}
NAMES = {"sup-e": "Euro Brands", "sup-j": "Nippon Ads"}


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Debian's Chromium, launched by Playwright (as the dashboard's tests launch it)."""
    if not dashboard.CHROMIUM.exists():
        dashboard._unavailable(f"no Chromium at {dashboard.CHROMIUM}: run scripts/system-deps.sh")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        dashboard._unavailable("the playwright package is missing: pip install -e '.[dev]'")
    with sync_playwright() as pw:
        launched = pw.chromium.launch(
            executable_path=str(dashboard.CHROMIUM), args=dashboard.ARGS, headless=True
        )
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def billed(shared_db: str) -> Iterator[tuple[ServerProcess, str, dict[str, str]]]:
    """Each supplier's plays, two of them failed with a screenshot; references uploaded."""
    now = now_ms()
    with ServerProcess(shared_db, "--limit", "verify_settle_ms=0") as server:
        token = operator_token(shared_db, "ops-statement-page")
        with client(server.url, token) as http:
            assert http.put("/v1/catalog", json=catalog()).status_code == 200
            for content, colour in (("cnt-e", (20, 160, 60)), ("cnt-j", (30, 60, 200))):
                reference = http.put(
                    f"/v1/contents/{content}/reference",
                    content=png(32, 18, colour),
                    headers={"Content-Type": "image/png"},
                )
                assert reference.status_code in (200, 201), reference.text
        for screen, store_id in SCREENS.items():
            device_token = provision(shared_db, screen, store_id)
            shot = upload_png(server, device_token, png(32, 18, (200, 30, 30)))
            failed = {"campaign_id": "cmp-zz", "screenshot_sha256": shot, "screenshot_at_ms": 7_500}
            plays = records(screen, 3, now - 10 * 60_000, a=dict(failed), b=dict(failed))
            acks = post_records(server, device_token, plays, screen)
            assert all(a["result"] == "accepted" for a in acks), acks
        settle(server, token)
        hour = now // HOUR_MS * HOUR_MS
        period = {"from": rfc3339(hour - 2 * HOUR_MS) or "", "to": rfc3339(hour + HOUR_MS) or ""}
        yield server, token, period


def printed(chromium: Any, server: ServerProcess, token: str, query: dict[str, str]) -> Any:
    """The page opened with the dashboard's token, once it says it is ready, then its PDF."""
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    context.add_init_script(f"sessionStorage.setItem('playproof-token', {json.dumps(token)})")
    page = context.new_page()
    page.set_default_timeout(dashboard.WAIT_MS)
    try:
        page.goto(f"{server.url}/statement.html?{urlencode(query)}")
        page.wait_for_selector("body[data-ready]")
        assert page.get_attribute("body", "data-ready") == "true", page.inner_text("#message")
        shown = page.eval_on_selector_all(
            "figure img", "imgs => imgs.map(i => i.complete && i.naturalWidth > 0)"
        )
        pdf = page.pdf(prefer_css_page_size=True, print_background=True)
        return shown, PdfReader(io.BytesIO(pdf))
    finally:
        context.close()


def test_the_printed_statement_has_a_page_per_supplier_with_the_digest(
    chromium: Any, billed: tuple[ServerProcess, str, dict[str, str]]
) -> None:
    server, token, period = billed
    with client(server.url, token) as http:
        document = http.get("/v1/reports/billing", params=period).json()
    shown, pdf = printed(chromium, server, token, period)
    assert len(pdf.pages) == 2, "one page per supplier"
    texts = [" ".join(page.extract_text().split()) for page in pdf.pages]
    for text, supplier in zip(texts, sorted(NAMES), strict=True):
        assert document["digest"] in text
        assert f"{NAMES[supplier]} ({supplier})" in text
        others = set(NAMES) - {supplier}
        assert not any(f"({other})" in text for other in others), "one supplier a page"
        assert "provisional" in text.lower() and document["from"] in text
        assert "unknown_campaign" in text, "failures by reason"
        assert "reference of cnt-" in text, "a failed play's screenshot beside its reference"
    # Two failed plays per supplier, each shown with its content's reference: 8 pictures.
    assert shown == [True] * 8


def test_one_supplier_alone_prints_on_one_page(
    chromium: Any, billed: tuple[ServerProcess, str, dict[str, str]]
) -> None:
    server, token, period = billed
    _, pdf = printed(chromium, server, token, {**period, "supplier_id": "sup-j"})
    assert len(pdf.pages) == 1
    assert "Nippon Ads (sup-j)" in " ".join(pdf.pages[0].extract_text().split())


def test_the_page_asks_for_a_token_when_it_has_none(
    chromium: Any, billed: tuple[ServerProcess, str, dict[str, str]]
) -> None:
    server, _, period = billed
    context = chromium.new_context()
    page = context.new_page()
    try:
        page.goto(f"{server.url}/statement.html?{urlencode(period)}")
        page.wait_for_selector("body[data-ready='error']")
        assert page.is_visible("#token")
        assert "token" in page.inner_text("#message").lower()
    finally:
        context.close()
