"""Operators' actions on the catalog: import (merge or replace), show, reference images.

The same functions serve `PUT /v1/catalog` and `playproof catalog import`: the
document is parsed and checked first (every error names its entry and field),
then merged with the stored catalog inside the store's transaction, its
references checked against the result, every change kept with its time, and
the decided plays it touches sent back to pending for a new decision.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from playproof import imaging
from playproof.catalog import Catalog, Change, check_references, index, parse_catalog
from playproof.catalog_merge import merge, to_json
from playproof.errors import CatalogError, NotFound
from playproof.stores import verification_queries as vq
from playproof.stores.base import Store

# A catalog of a few thousand campaigns and screens is well under this.
MAX_CATALOG_BYTES: Final = 16 * 1024 * 1024


def importer(incoming: Catalog, replace: bool) -> Callable[[Catalog], tuple[Catalog, list[Change]]]:
    """The update a store applies in its transaction: merge, then check the references."""

    def update(current: Catalog) -> tuple[Catalog, list[Change]]:
        merged, changes = merge(current, incoming, replace)
        check_references(merged)
        return merged, changes

    return update


async def import_catalog(store: Store, data: bytes, replace: bool, now: int) -> list[Change]:
    """Parse a catalog document and merge it into the store's (or make it the catalog)."""
    incoming = parse_catalog(data)
    return await store.update_catalog(importer(incoming, replace), now)


def change_view(change: Change) -> dict[str, Any]:
    """A change as operators see it (the entries as JSON text, as kept)."""
    return {
        "kind": change.kind,
        "id": change.id,
        "action": change.action,
        "before": change.before,
        "after": change.after,
    }


async def show(store: Store) -> bytes:
    """The catalog's active entries as one canonical JSON document."""
    return to_json((await store.load_catalog()).catalog)


async def add_reference(store: Store, content_id: str, data: bytes, now: int) -> dict[str, Any]:
    """Keep an image as a reference of a content in the catalog; its hash and whether new."""
    state = await store.load_catalog()
    if content_id not in index(state.catalog).contents:
        raise NotFound(f"no content {content_id!r} in the catalog: import it first")
    facts = await asyncio.to_thread(imaging.fingerprint, data)
    sha256 = hashlib.sha256(data).hexdigest()
    await asyncio.to_thread(store.blobs.put, sha256, data)
    created = await store.add_reference(content_id, sha256, facts.phash, now)
    return {"content_id": content_id, "sha256": sha256, "phash": facts.phash, "created": created}


async def import_references(store: Store, catalog: Catalog, base: Path, now: int) -> int:
    """Upload the reference images a catalog names, paths relative to `base`; how many new."""
    added = 0
    for content in catalog.contents:
        for i, name in enumerate(content.reference_images):
            path = base / name
            try:
                data = await asyncio.to_thread(path.read_bytes)
            except OSError as exc:
                raise CatalogError(
                    f"contents[{content.content_id}].reference_images[{i}]: expected a "
                    f"readable image file, got {str(path)!r} ({exc.strerror})"
                ) from None
            found = await add_reference(store, content.content_id, data, now)
            added += bool(found["created"])
    return added


async def references_view(store: Store, content_id: str) -> dict[str, Any]:
    """A content's reference images, each with the URL of its picture."""
    found = await vq.content_references(store, content_id)
    base = f"/v1/contents/{content_id}/references"
    return {
        "content_id": content_id,
        "references": [
            {"sha256": sha, "phash": phash, "added_at": at, "url": f"{base}/{sha}"}
            for sha, phash, at in found
        ],
    }


async def reference_image(store: Store, content_id: str, sha256: str) -> tuple[bytes, str]:
    """One reference picture of a content and its media type; NotFound if it is not one."""
    known = {sha for sha, _, _ in await vq.content_references(store, content_id)}
    data = await asyncio.to_thread(store.blobs.read, sha256) if sha256 in known else None
    if data is None:
        raise NotFound(f"no reference image {sha256} of content {content_id!r}")
    return data, "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"


async def verification_status(
    store: Store, now: int, decided_per_s: float | None = None
) -> dict[str, Any]:
    """The verifier's queue (plays pending, the oldest one's arrival, the lag) and, when this
    service verifies, its throughput over the last minute."""
    oldest = await vq.oldest_pending(store)
    return {
        "pending": await vq.pending_count(store),
        "oldest_pending_at": oldest,
        "lag_s": None if oldest is None else max(0, now - oldest) / 1000,
        "decided_per_s": decided_per_s,
    }
