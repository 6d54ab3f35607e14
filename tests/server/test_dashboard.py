"""The operators' dashboard in a real headless Chromium, driven by Playwright, on a real server.

Debian's chromium at /usr/bin/chromium (scripts/system-deps.sh installs it);
Playwright's own browser downloads are never used. Under CI=true a missing
browser or Playwright fails these tests; elsewhere they skip, saying why.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from playproof.rules import HOUR_MS
from playproof.server.formats import rfc3339
from tests.server.reporting import every_device, operator_token, post_records, upload_png
from tests.support import IN_CI, ServerProcess, client, make_record, now_ms, png, provision

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 15_000


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: the dashboard tests must run, not skip)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, launched by Playwright."""
    if not CHROMIUM.exists():
        _unavailable(f"no Chromium at {CHROMIUM}: run scripts/system-deps.sh")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is missing: pip install -e '.[dev]'")
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield launched
        launched.close()


class Fleet:
    """A server with two devices that have played, a screenshot, a reject and an operator."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.operator = operator_token(server.db_url, "ops-dash")
        self.tokens = {d: provision(server.db_url, d, "store-1") for d in ("scr-d1", "scr-d2")}
        self.seq = dict.fromkeys(self.tokens, 0)
        self.image = png()
        self.sha = upload_png(server, self.tokens["scr-d1"], self.image)

    def play(self, device_id: str, n: int, **fields: Any) -> None:
        """`n` plays of `device_id`, acknowledged."""
        records = []
        for _ in range(n):
            self.seq[device_id] += 1
            records.append(make_record(device_id=device_id, seq=self.seq[device_id], **fields))
        acks = post_records(self.server, self.tokens[device_id], records, device_id)
        assert all(a["result"] == "accepted" for a in acks), acks

    def api(self, path: str, **params: str) -> Any:
        """An operator API answer, as JSON."""
        with client(self.server.url, self.operator) as http:
            response = http.get(path, params=params)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="module")
def fleet(server: ServerProcess) -> Fleet:
    """The module's fleet, seeded once."""
    seeded = Fleet(server)
    seeded.play(
        "scr-d1", 3, campaign_id="cmp-alpha", screenshot_sha256=seeded.sha, screenshot_at_ms=7_000
    )
    seeded.play("scr-d1", 2, campaign_id="cmp-beta", end_reason="skipped", duration_ms=3_000)
    seeded.play("scr-d2", 4, campaign_id="cmp-alpha")
    stale = make_record(device_id="scr-d2", seq=99, end_ts=now_ms() - 5 * HOUR_MS)
    post_records(server, seeded.tokens["scr-d2"], [stale], "scr-d2")
    return seeded


@pytest.fixture
def page(browser: Any, server: ServerProcess) -> Iterator[Any]:
    """A fresh browser tab on the dashboard."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    tab.set_default_timeout(WAIT_MS)
    tab.goto(server.url + "/")
    yield tab
    context.close()


def sign_in(page: Any, token: str) -> None:
    page.fill("#token", token)
    page.click("#login-button")


def text_of(page: Any, selector: str) -> str:
    return str(page.locator(selector).inner_text()).strip()


def test_the_login_refuses_a_wrong_token_and_a_device_token(page: Any, fleet: Fleet) -> None:
    sign_in(page, "ppo_not-a-real-token")
    page.wait_for_selector("#login-error:not([hidden])")
    assert "refused" in text_of(page, "#login-error").lower()
    assert page.locator("#app").is_hidden()
    sign_in(page, fleet.tokens["scr-d1"])
    page.wait_for_function(
        "document.getElementById('login-error').textContent.includes('device token')"
    )
    assert page.locator("#app").is_hidden()


def test_the_page_shows_the_numbers_the_api_gives(page: Any, fleet: Fleet) -> None:
    sign_in(page, fleet.operator)
    page.wait_for_selector("#app:not([hidden])")
    assert text_of(page, "#operator") == "operator ops-dash"
    day = now_ms() // 86_400_000 * 86_400_000
    report = fleet.api(
        "/v1/reports/delivery",
        **{"from": str(rfc3339(day - 6 * 86_400_000)), "to": str(rfc3339(day + 86_400_000))},
        group_by="campaign_id",
    )
    plays = f"{report['totals']['plays']:,}"
    page.wait_for_function(f"document.getElementById('total-plays').textContent === '{plays}'")
    shown = page.locator("#delivery tbody tr").all_inner_texts()
    assert [r.split("\t")[:4] for r in shown] == [
        [r["campaign_id"], str(r["plays"]), str(r["valid"]), str(r["partial"])]
        for r in report["rows"]
    ]
    devices = every_device(fleet.server, fleet.operator, limit=1)  # a page a device
    page.wait_for_selector(f"#devices tbody tr >> nth={len(devices) - 1}")
    ids = page.locator("#devices tbody tr").evaluate_all("rs => rs.map(r => r.dataset.device)")
    assert ids == [d["device_id"] for d in devices]
    stale = page.locator('#rejects tbody tr[data-reason="stale"]')
    counts = fleet.api("/v1/reports/rejects", group_by="reason")["rows"]
    assert stale.inner_text().split("\t")[1] == str(
        next(r["records"] for r in counts if r["reason"] == "stale")
    )


def test_the_screenshot_of_an_impression_is_shown(page: Any, fleet: Fleet) -> None:
    sign_in(page, fleet.operator)
    image = page.locator("#impressions img.thumb").first
    image.wait_for()
    page.wait_for_function("document.querySelector('#impressions img.thumb').naturalWidth === 8")
    assert image.get_attribute("alt") == "proof screenshot"


def test_the_page_updates_live_as_records_arrive(page: Any, fleet: Fleet) -> None:
    sign_in(page, fleet.operator)
    page.wait_for_function("document.getElementById('total-plays').textContent !== '0'")
    before = int(text_of(page, "#total-plays").replace(",", ""))
    accepted = int(text_of(page, "#live-accepted").replace(",", ""))
    fleet.play("scr-d2", 6, campaign_id="cmp-gamma")
    page.wait_for_function(
        f"document.getElementById('total-plays').textContent === '{before + 6:,}'"
    )
    page.wait_for_function(
        "Number(document.getElementById('live-accepted').textContent.replace(/,/g, '')) "
        f">= {accepted + 6}"
    )
    page.wait_for_selector('#delivery tbody tr[data-campaign="cmp-gamma"]')


def test_signing_out_forgets_the_token(page: Any, fleet: Fleet) -> None:
    sign_in(page, fleet.operator)
    page.wait_for_selector("#app:not([hidden])")
    page.click("#logout")
    page.wait_for_selector("#login:not([hidden])")
    page.reload()
    assert page.locator("#app").is_hidden()
    assert page.evaluate("sessionStorage.getItem('playproof-token')") is None


def test_failed_plays_show_their_reasons_and_the_screenshot_beside_the_reference(
    page: Any, fleet: Fleet
) -> None:
    """The verification card: failures by reason as the API counts them, and the evidence."""
    with client(fleet.server.url, fleet.operator) as http:
        booked = {
            "suppliers": [{"supplier_id": "sup-1", "currency": "EUR"}],
            "contents": [{"content_id": "cnt-1", "expected_ms": 15000}],
        }
        assert http.put("/v1/catalog", json=booked).status_code == 200
        ref = http.put(
            "/v1/contents/cnt-1/reference",
            content=fleet.image,
            headers={"Content-Type": "image/png"},
        )
        assert ref.status_code in (200, 201), ref.text
    sign_in(page, fleet.operator)
    row = page.locator('#verify-reasons tbody tr[data-reason="unknown_campaign"]')
    row.wait_for(timeout=60_000)  # the plays settle, then the verifier decides them
    day = now_ms() // 86_400_000 * 86_400_000
    period = {"from": str(rfc3339(day - 6 * 86_400_000)), "to": str(rfc3339(day + 86_400_000))}
    counted = fleet.api("/v1/reports/verification", **period, group_by="reason")["rows"]
    failed = next(r["failed"] for r in counted if r["reason"] == "unknown_campaign")
    page.wait_for_function(
        "document.querySelector('#verify-reasons tr[data-reason=\"unknown_campaign\"]')"
        f".children[1].textContent === '{failed:,}'",
        timeout=30_000,
    )
    evidence = page.locator('#verify-failed-plays tbody tr[data-device="scr-d1"] img.thumb')
    page.wait_for_function(
        'document.querySelectorAll(\'#verify-failed-plays tr[data-device="scr-d1"] '
        "img.thumb').length >= 2",
        timeout=30_000,
    )
    assert evidence.count() >= 2, "a screenshot and its content's reference, side by side"
