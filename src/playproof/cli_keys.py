"""`playproof devices keys ...`: a device's public keys and the append-only key log.

Each command opens the store at `--db` like the other `devices` commands. A
service running on the same database sees a change within its token cache
time (2 s); the same change through the service's API is seen at once.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from playproof.cli_common import ConfigOption, DbOption, LimitOption, err, fail, on_store
from playproof.stores import DEFAULT_URL

if TYPE_CHECKING:
    from playproof.keylog import KeyEntry
    from playproof.stores.base import DeviceKey, Store

keys = typer.Typer(
    help="Device public keys (protocol version 2) and the append-only key log.",
    no_args_is_help=True,
)

DeviceArg = Annotated[str, typer.Argument(help="The device.")]
ActorOption = Annotated[
    str | None,
    typer.Option("--actor", help="Who acts, as the key log records it (default: cli:$USER)."),
]
T = TypeVar("T")

# Pages of the log read at once: the whole log is read, page after page.
LOG_PAGE = 100_000


def _actor(given: str | None) -> str:
    return given or f"cli:{getpass.getuser()}"


def _key_write(
    db_url: str, actor: str | None, write: Callable[[Store, int, str], Awaitable[T]]
) -> T:
    """Run one key write on the store at `db_url`, given the time (the service's clock) and
    the actor the key log records, both read as it runs."""
    from playproof.server.ingest import wall_clock_ms

    return on_store(db_url, lambda store: write(store, wall_clock_ms(), _actor(actor)))


def _when(ms: int | None) -> str:
    from playproof.server.formats import rfc3339

    return rfc3339(ms) or "-"


def _key_row(key: DeviceKey) -> list[str]:
    by = key.registered_by
    revoked = "-" if key.revoked_at is None else f"{_when(key.revoked_at)} by {key.revoked_by}"
    return [key.key_id, _when(key.registered_at), by, revoked, key.public_key]


@keys.command("list")
def keys_list(
    device_id: DeviceArg,
    db_url: DbOption = DEFAULT_URL,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List a device's keys, revoked ones included, with its self-enrolment state."""
    from playproof.errors import NotFound
    from playproof.server.keys import keys_view

    async def read(store: Store) -> Any:
        device = await store.get_device(device_id)
        if device is None:
            raise NotFound(f"no device {device_id!r} is registered")
        return device

    device = on_store(db_url, read)
    if as_json:
        print(json.dumps({"device_id": device_id, **keys_view(device)}, indent=2))
        return
    table = Table("key", "registered", "by", "revoked", "public key")
    for key in device.keys:
        table.add_row(*_key_row(key))
    Console().print(table)
    enrol = "open" if device.self_enrol else "closed"
    required = "required" if device.signatures_required else "not required"
    err.print(f"self-enrolment {enrol}; signatures {required}")


@keys.command("add")
def keys_add(
    device_id: DeviceArg,
    public_key: Annotated[str, typer.Argument(help="The Ed25519 public key: 64 hex digits.")],
    db_url: DbOption = DEFAULT_URL,
    actor: ActorOption = None,
    config: ConfigOption = None,
    limit: LimitOption = None,
) -> None:
    """Add a key to a device (also when its self-enrolment is closed); print its key id."""
    from playproof.config import load_limits
    from playproof.errors import KeyRefused
    from playproof.signing import check_public_key, key_id_of

    max_keys = load_limits(config, limit or []).max_device_keys
    try:
        key_id = key_id_of(check_public_key(public_key))
    except KeyRefused as exc:
        raise fail(str(exc)) from None

    result = _key_write(
        db_url,
        actor,
        lambda store, at, by: store.register_key(
            device_id, key_id, public_key, at, by, True, max_keys
        ),
    )
    print(key_id)
    err.print(f"key {'added' if result == 'created' else 'held already'} for {device_id}")


@keys.command("revoke")
def keys_revoke(
    device_id: DeviceArg,
    key_id: Annotated[str, typer.Argument(help="The key id (16 hex digits).")],
    db_url: DbOption = DEFAULT_URL,
    actor: ActorOption = None,
) -> None:
    """Revoke a key: records received from now on that it signed are refused."""
    done = _key_write(
        db_url, actor, lambda store, at, by: store.revoke_key(device_id, key_id, at, by)
    )
    err.print(f"revoked key {key_id} of {device_id}" if done else f"{key_id} was revoked already")


@keys.command("lock")
def keys_lock(
    device_id: DeviceArg,
    open_: Annotated[
        bool, typer.Option("--open", help="Open self-enrolment again instead.")
    ] = False,
    db_url: DbOption = DEFAULT_URL,
    actor: ActorOption = None,
) -> None:
    """Close a device's self-enrolment: only operators add its keys (`--open` reopens it)."""
    changed = _key_write(
        db_url, actor, lambda store, at, by: store.set_self_enrol(device_id, open_, at, by)
    )
    state = "open" if open_ else "closed"
    err.print(f"self-enrolment of {device_id} {state}{'' if changed else ' already'}")


@keys.command("require")
def keys_require(
    device_id: DeviceArg, db_url: DbOption = DEFAULT_URL, actor: ActorOption = None
) -> None:
    """Refuse a device's version-1 records (bad_signature) before it has any key."""
    changed = _key_write(
        db_url, actor, lambda store, at, by: store.require_signatures(device_id, at, by)
    )
    err.print(f"signatures required of {device_id}{'' if changed else ' already'}")


async def read_log(store: Store) -> list[KeyEntry]:
    """The whole key log, page after page."""
    entries: list[KeyEntry] = []
    while page := await store.key_log(entries[-1].entry if entries else 0, LOG_PAGE):
        entries.extend(page)
        if len(page) < LOG_PAGE:
            break
    return entries


@keys.command("log")
def keys_log(
    db_url: DbOption = DEFAULT_URL,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the log as GET /v1/keys serves it.")
    ] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Write here (default: stdout).")] = None,
) -> None:
    """Print the key log and check its chain; exit 1, naming the entry, where it breaks.

    `--json --out KEYLOG.json` keeps it as a buyer does (`playproof verify-evidence`).
    """
    from playproof import keylog

    entries = on_store(db_url, read_log)
    if as_json:
        text = keylog.document(entries).decode()
    else:
        lines = [
            f"{e.entry}\t{_when(e.at)}\t{e.event}\t{e.device_id}\t{e.key_id or '-'}\t{e.actor}"
            f"\t{e.entry_hash}"
            for e in entries
        ]
        text = "\n".join(lines)
    if out is None:
        print(text)
    else:
        try:
            out.write_text(text + "\n")
        except OSError as exc:
            raise fail(f"cannot write {out}: {exc.strerror}") from None
    broken = keylog.chain_error(entries)
    if broken:
        raise fail(f"the key log's chain is broken: {broken}")
    err.print(
        f"{len(entries)} entries; the chain holds; head {keylog.head_of(entries)}", soft_wrap=True
    )
