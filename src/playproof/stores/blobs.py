"""Content-addressed blob folder for proof screenshots: one file per SHA-256, written once."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from playproof.errors import ProtocolError, StoreUnavailable


class BlobStore:
    """Blobs under `root/<first two hex>/<sha256>`, written atomically and durably."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        """Where the blob with this hash lives (whether or not it exists)."""
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        """Whether the blob is stored."""
        return self.path(sha256).is_file()

    def put(self, sha256: str, data: bytes) -> bool:
        """Store `data` under its hash after checking it; False when it was already there."""
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ProtocolError(f"body hashes to {actual}, expected {sha256} as in the path")
        target = self.path(sha256)
        if target.is_file():
            return False
        try:
            self._write(target, data)
        except OSError as exc:
            raise StoreUnavailable(f"cannot store blob {sha256}: {exc.strerror}") from None
        return True

    def _write(self, target: Path, data: bytes) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def read(self, sha256: str) -> bytes | None:
        """The blob's bytes, or None when it is not stored."""
        try:
            return self.path(sha256).read_bytes()
        except FileNotFoundError:
            return None
