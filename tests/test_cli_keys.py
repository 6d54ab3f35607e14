"""`playproof devices keys ...` on a real SQLite file, in real processes."""

from __future__ import annotations

import getpass
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from playproof import keylog
from playproof.signing import KeyPair
from tests.support import SHARED, provision

VECTORS = json.loads((SHARED / "vectors-v2.json").read_text())


def playproof(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "playproof", *args], capture_output=True, text=True, timeout=60
    )


def keys(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return playproof("devices", "keys", *args, "--db", db_url)


def test_add_list_lock_require_revoke_and_log_a_device_key(db_url: str) -> None:
    provision(db_url, "scr-1")
    added = keys(db_url, "add", "scr-1", VECTORS["public_key_hex"], "--actor", "alice")
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == VECTORS["key_id"]
    assert keys(db_url, "lock", "scr-1").returncode == 0
    assert keys(db_url, "require", "scr-1").returncode == 0  # already, by the key
    revoked = keys(db_url, "revoke", "scr-1", VECTORS["key_id"], "--actor", "bob")
    assert revoked.returncode == 0, revoked.stderr
    listed = json.loads(keys(db_url, "list", "scr-1", "--json").stdout)
    assert listed["self_enrol"] is False and listed["signatures_required"] is True
    [key] = listed["keys"]
    assert (key["key_id"], key["registered_by"], key["revoked_by"]) == (
        VECTORS["key_id"],
        "alice",
        "bob",
    )
    shown = keys(db_url, "log", "--json")
    assert shown.returncode == 0, shown.stderr
    doc = keylog.parse_document(shown.stdout.encode())
    assert [(e.event, e.actor) for e in doc.entries] == [
        ("added", "alice"),
        ("self_enrol_closed", f"cli:{getpass.getuser()}"),
        ("revoked", "bob"),
    ]
    assert keylog.chain_error(doc.entries, head=doc.head) == ""
    assert "the chain holds" in shown.stderr


@pytest.mark.parametrize(
    "refused", VECTORS["refused_public_keys"], ids=lambda v: v["why"].split(" (")[0][:30]
)
def test_add_refuses_the_vectors_refused_keys(db_url: str, refused: dict[str, str]) -> None:
    provision(db_url, "scr-1")
    answer = keys(db_url, "add", "scr-1", refused["public_key_hex"])
    assert answer.returncode == 1 and "expected" in answer.stderr


def test_log_out_writes_the_json_a_buyer_keeps(db_url: str, tmp_path: Path) -> None:
    provision(db_url, "scr-1")
    keys(db_url, "add", "scr-1", KeyPair.generate().public.hex())
    out = tmp_path / "KEYLOG.json"
    assert keys(db_url, "log", "--json", "--out", str(out)).returncode == 0
    doc = keylog.parse_document(out.read_bytes())
    assert len(doc.entries) == 1 and doc.head == doc.entries[0].entry_hash


def test_a_tampered_entry_is_refused_by_the_trigger_and_once_forced_the_log_names_it(
    db_url: str,
) -> None:
    provision(db_url, "scr-1")
    for _ in range(3):
        assert keys(db_url, "add", "scr-1", KeyPair.generate().public.hex()).returncode == 0
    path = db_url.removeprefix("sqlite:///")
    forged = KeyPair.generate().public.hex()
    rewrite = f"UPDATE key_log SET public_key = '{forged}' WHERE entry = 2"
    with sqlite3.connect(path) as conn, pytest.raises(sqlite3.IntegrityError, match="append"):
        conn.execute(rewrite)
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TRIGGER key_log_no_update")
        conn.execute(rewrite)
    shown = keys(db_url, "log")
    assert shown.returncode == 1
    assert "entry 2: hash mismatch" in shown.stderr
