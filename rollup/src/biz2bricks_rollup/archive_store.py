"""Where the archive's Parquet files live: a local directory or ``gs://bucket/prefix``.

Both stores put a whole file at once (a local file is written beside its name and renamed
over it; a GCS object appears only when its upload completes), so a crash never leaves a half
file under a name a reader lists. Keys are relative paths such as
``usage_events/month=2025-01/part-00000.parquet``.

GCS goes through google-cloud-storage with the application default credentials; with
``STORAGE_EMULATOR_HOST`` set (an emulator: tests, the demo) the client talks to it
anonymously.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Protocol

from biz2bricks_core.errors import ConfigurationError


class ArchiveStore(Protocol):
    """Files of the archive, by key."""

    location: str

    def put(self, key: str, source: Path) -> None:
        """Store the local file ``source`` under ``key``, replacing what was there."""

    def get(self, key: str) -> bytes:
        """The content stored under ``key``."""

    def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix``, sorted."""

    def delete(self, key: str) -> None:
        """Remove ``key`` (nothing if absent)."""


class LocalStore:
    """A directory on a local or mounted file system."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)

    def put(self, key: str, source: Path) -> None:
        """Copy then rename, so the key holds the old file or the whole new one."""
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        with source.open("rb") as src, partial.open("wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(partial, target)

    def get(self, key: str) -> bytes:
        """Read the file."""
        return (self.root / key).read_bytes()

    def list(self, prefix: str) -> list[str]:
        """Files (not directories) under the prefix, as keys."""
        base = self.root / prefix
        if not base.exists():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file())

    def delete(self, key: str) -> None:
        """Unlink the file if present."""
        (self.root / key).unlink(missing_ok=True)


class GcsStore:
    """A bucket and prefix in Google Cloud Storage."""

    def __init__(self, bucket: str, prefix: str) -> None:
        from google.cloud import storage  # type: ignore[attr-defined]  # local: not needed

        if os.environ.get("STORAGE_EMULATOR_HOST"):
            from google.auth.credentials import AnonymousCredentials

            client = storage.Client(
                project=os.environ.get("GOOGLE_CLOUD_PROJECT", "emulator"),
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            )
        else:
            client = storage.Client()
        self._client = client
        self._bucket = client.bucket(bucket)
        self._prefix = prefix.strip("/")
        self.location = f"gs://{bucket}/{self._prefix}".rstrip("/")

    def _name(self, key: str) -> str:
        return f"{self._prefix}/{key}" if self._prefix else key

    def put(self, key: str, source: Path) -> None:
        """Upload the file (the object appears when the upload completes)."""
        self._bucket.blob(self._name(key)).upload_from_filename(str(source))

    def get(self, key: str) -> bytes:
        """Download the object."""
        data: bytes = self._bucket.blob(self._name(key)).download_as_bytes()
        return data

    def list(self, prefix: str) -> list[str]:
        """Objects under the prefix, as keys."""
        skip = len(self._prefix) + 1 if self._prefix else 0
        blobs = self._client.list_blobs(self._bucket, prefix=self._name(prefix))
        return sorted(b.name[skip:] for b in blobs)

    def delete(self, key: str) -> None:
        """Delete the object if present."""
        from google.api_core.exceptions import NotFound

        with contextlib.suppress(NotFound):
            self._bucket.blob(self._name(key)).delete()


def open_store(url: str) -> ArchiveStore:
    """The store named by ``USAGE_ARCHIVE_URL``: ``gs://bucket/prefix`` or a local path."""
    if url.startswith("gs://"):
        bucket, _, prefix = url.removeprefix("gs://").partition("/")
        if not bucket:
            raise ConfigurationError(f"USAGE_ARCHIVE_URL: no bucket in {url!r}")
        return GcsStore(bucket, prefix)
    if "://" in url and not url.startswith("file://"):
        raise ConfigurationError(
            f"USAGE_ARCHIVE_URL: {url!r} is neither a local directory nor gs://bucket/prefix"
        )
    return LocalStore(Path(url.removeprefix("file://")))
