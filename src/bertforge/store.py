"""Object-store folders (``s3://bucket/prefix``): what prep, the loader's checks, the trainer and export need of
a bucket, on Composer's ``S3ObjectStore`` (boto3 underneath).

Credentials and the endpoint come from the usual places: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (or an
AWS profile), and for an S3-compatible store (MinIO, Ceph, R2...) its URL in ``S3_ENDPOINT_URL``, which Composer
and mosaicml-streaming both read (boto3's own ``AWS_ENDPOINT_URL`` works too). ``RemoteFolder.check`` tries the
bucket once, so a missing bucket, missing credentials or an unreachable endpoint fail before any work, with the
URL named, instead of in a DataLoader worker an hour into a run.

Imports no torch; boto3 is imported when a store is first used.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from bertforge.errors import ConfigError

SCHEMES = ("s3",)
"""The object stores bertforge reads and writes itself (streaming can read more, but the checks here cannot)."""


def is_remote(path: str | Path | None) -> bool:
    """Whether ``path`` is a URL (``scheme://...``) rather than a local path."""
    return path is not None and "://" in str(path)


class RemoteFolder:
    """A "folder" in a bucket: ``s3://bucket/prefix``; names are relative to the prefix, with ``/`` separators."""

    def __init__(self, uri: str, _client_of: RemoteFolder | None = None):
        scheme, _, rest = str(uri).partition("://")
        if scheme not in SCHEMES:
            raise ConfigError(f"'{uri}': bertforge reads and writes object stores by s3:// URLs (S3 or an "
                              f"S3-compatible store with S3_ENDPOINT_URL set), not {scheme}://")
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ConfigError(f"'{uri}' names no bucket; write s3://BUCKET/PREFIX")
        self.uri = f"s3://{bucket}/{prefix.strip('/')}".rstrip("/")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self._client_of = _client_of

    def __repr__(self) -> str:
        return self.uri

    def child(self, name: str) -> RemoteFolder:
        """A sub-folder, sharing this folder's connection (a boto3 client costs tens of milliseconds to make)."""
        return RemoteFolder(f"{self.uri}/{name.strip('/')}", _client_of=self)

    @functools.cached_property
    def _store(self):
        """Composer's S3ObjectStore over the whole bucket (object keys are made here, by ``_key``), so that every
        sub-folder can share it."""
        if self._client_of is not None:
            return self._client_of._store
        from composer.utils.object_store import S3ObjectStore  # noqa: PLC0415 (Composer loads torch; prep and plan use the store torch-free)

        return S3ObjectStore(bucket=self.bucket)

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def check(self, what: str) -> None:
        """The bucket exists and the credentials may use it; else one line naming ``what``, the URL and a fix."""
        endpoint = os.environ.get("S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
        try:
            self._store.client.head_bucket(Bucket=self.bucket)
        except NoCredentialsError:
            raise ConfigError(f"{what} '{self.uri}': no AWS credentials; set AWS_ACCESS_KEY_ID and "
                              f"AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)") from None
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket"):
                raise ConfigError(f"{what} '{self.uri}': bucket '{self.bucket}' does not exist at {endpoint}; "
                                  f"create it or fix the URL (or S3_ENDPOINT_URL)") from None
            raise ConfigError(f"{what} '{self.uri}': the store at {endpoint} refused access to bucket "
                              f"'{self.bucket}' ({code or err}); check AWS_ACCESS_KEY_ID / "
                              f"AWS_SECRET_ACCESS_KEY and the bucket's permissions") from None
        except BotoCoreError as err:
            raise ConfigError(f"{what} '{self.uri}': cannot reach the object store at {endpoint} ({err}); check "
                              f"S3_ENDPOINT_URL and the network") from None

    def listing(self, under: str = "") -> dict[str, tuple[int, str]]:
        """Every object under ``under`` (a sub-folder name, or '' for all) as {name relative to this folder:
        (bytes, ETag)}, by one paginated listing."""
        start = self._key(under.strip("/") + "/" if under else "")
        cut = len(self.prefix) + 1 if self.prefix else 0
        pages = self._store.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start)
        return {item["Key"][cut:]: (item["Size"], item["ETag"].strip('"'))
                for page in pages for item in page.get("Contents", [])}

    def sizes(self, under: str = "") -> dict[str, int]:
        """Every object under ``under`` as {name relative to this folder: bytes}."""
        return {name: size for name, (size, _) in self.listing(under).items()}

    def exists(self, name: str) -> bool:
        try:
            self._store.client.head_object(Bucket=self.bucket, Key=self._key(name))
            return True
        except ClientError as err:
            if _not_found(err):
                return False
            raise

    def upload(self, local: str | Path, name: str) -> None:
        self._store.upload_object(self._key(name.strip("/")), str(local))

    def upload_tree(self, local: str | Path, name: str, last: tuple[str, ...] = ()) -> None:
        """Every file under ``local`` to ``name/...``, the files named in ``last`` after all others: a reader that
        takes one of them as the mark of a complete upload never sees a partial one."""
        root = Path(local)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        for path in sorted(files, key=lambda p: p.relative_to(root).as_posix() in last):
            self.upload(path, f"{name}/{path.relative_to(root).as_posix()}")

    def download(self, name: str, local: str | Path) -> Path:
        """``name`` to the file ``local`` (written whole, then renamed into place)."""
        self._store.download_object(self._key(name.strip("/")), str(local), overwrite=True)
        return Path(local)

    def sync_down(self, name: str, local: Path, etag: str) -> None:
        """``name`` to ``local`` unless ``local`` already holds the same bytes (its MD5 is the object's ETag, as S3
        gives it for a small object uploaded whole; any other ETag means a download)."""
        if not (local.is_file() and hashlib.md5(local.read_bytes()).hexdigest() == etag):
            self.download(name, local)

    def read_text(self, name: str) -> str | None:
        """An object's text, or None when there is no such object."""
        try:
            body = self._store.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"]
        except ClientError as err:
            if _not_found(err):
                return None
            raise
        return body.read().decode("utf-8")

    def write_text(self, name: str, text: str) -> None:
        """One object, put whole (an S3 put is atomic: readers see the old object or the new one)."""
        self._store.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=text.encode("utf-8"))

    def delete(self, names: list[str]) -> None:
        for start in range(0, len(names), 1000):
            batch = [{"Key": self._key(n)} for n in names[start:start + 1000]]
            self._store.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})


def _not_found(err) -> bool:
    """Whether a botocore ClientError says there is no such object."""
    return str(err.response.get("Error", {}).get("Code", "")) in ("404", "NoSuchKey", "NotFound")
