"""Where run directories live: a local folder or an ``s3://bucket/prefix`` URL.

Why so small an interface: stages work on local paths (Scrapy, PIL and diffusers want files), so a
store only needs to move whole files and folders in and out, atomically enough that a crashed
stage never leaves a half-written file where the next run would read it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import urlparse

from .errors import StoreError


class Store(ABC):
    """Relative keys use ``/``; ``url`` is what a user would paste to find the data."""

    url: str

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Every file key under ``prefix`` (recursive), sorted."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None: ...

    @abstractmethod
    def upload_dir(self, local: Path, prefix: str) -> None:
        """Replace everything under ``prefix`` with the contents of ``local``."""

    @abstractmethod
    def download_dir(self, prefix: str, local: Path) -> Path: ...

    @abstractmethod
    def check_writable(self) -> None:
        """Raise ``StoreError`` (one line) if runs cannot be written here."""

    def local_path(self, key: str) -> Path | None:
        """The file system path of ``key`` when the store is local, else None."""
        return None

    def url_of(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{key}"


class LocalStore(Store):
    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if path != self.root and self.root not in path.parents:
            raise StoreError(f"key '{key}' points outside the store {self.root}")
        return path

    def local_path(self, key: str) -> Path:
        return self._path(key)

    def url_of(self, key: str) -> str:
        return str(self._path(key))

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{self._path(key)} does not exist") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.exists():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file())

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

    def upload_dir(self, local: Path, prefix: str) -> None:
        target = self._path(prefix)
        if Path(local).resolve() == target:
            return
        incoming = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.in")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(local, incoming)
        self.replace_dir(incoming, prefix)

    def replace_dir(self, src: Path, prefix: str) -> None:
        """Move ``src`` (on the same file system) to ``prefix`` with renames, so readers never
        see a mix of old and new files."""
        target = self._path(prefix)
        target.parent.mkdir(parents=True, exist_ok=True)
        old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
        if target.exists():
            os.replace(target, old)
        os.replace(src, target)
        shutil.rmtree(old, ignore_errors=True)

    def download_dir(self, prefix: str, local: Path) -> Path:
        src = self._path(prefix)
        if Path(local).resolve() != src:
            shutil.copytree(src, local, dirs_exist_ok=True)
        return Path(local)

    def check_writable(self) -> None:
        probe_dir = self.root
        try:
            probe_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=probe_dir, prefix=".write-probe-"):
                pass
        except OSError as e:
            raise StoreError(
                f"store {self.root} is not writable ({e.strerror or e}): "
                "choose another folder with --store or fix its permissions"
            ) from None


class S3Store(Store):
    """An S3 (or S3-compatible) bucket and prefix, through boto3."""

    def __init__(self, url: str, endpoint_url: str | None = None) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise StoreError(f"'{url}' is not an s3://bucket/prefix URL")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.url = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        import boto3
        from botocore.config import Config

        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
            "AWS_ENDPOINT_URL"
        )
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            config=Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3}),
        )

    def _key(self, key: str) -> str:
        if ".." in key.split("/"):
            raise StoreError(f"key '{key}' points outside the store {self.url}")
        return f"{self.prefix}/{key}".lstrip("/") if self.prefix else key

    def _error(self, action: str, key: str, e: Exception) -> StoreError:
        return StoreError(f"cannot {action} s3://{self.bucket}/{self._key(key)}: {e}")

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return bool(self.list(key))  # a "directory"
            raise self._error("read", key, e) from None

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except Exception as e:  # botocore raises many kinds; all mean the same to a user
            raise self._error("read", key, e) from None

    def write_bytes(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except Exception as e:
            raise self._error("write", key, e) from None

    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix).rstrip("/") + "/"
        keys: list[str] = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                keys += [obj["Key"] for obj in page.get("Contents", [])]
        except Exception as e:
            raise self._error("list", prefix, e) from None
        strip = len(self.prefix) + 1 if self.prefix else 0
        return sorted(k[strip:] for k in keys)

    def delete_prefix(self, prefix: str) -> None:
        keys = [*self.list(prefix), prefix]  # the folder's keys, or the one file (as LocalStore)
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": self._key(k)} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk})

    def upload_dir(self, local: Path, prefix: str) -> None:
        local = Path(local)
        new = {str(p.relative_to(local)).replace(os.sep, "/") for p in local.rglob("*") if p.is_file()}
        for rel in sorted(new):
            try:
                self.client.upload_file(str(local / rel), self.bucket, self._key(f"{prefix}/{rel}"))
            except Exception as e:
                raise self._error("write", f"{prefix}/{rel}", e) from None
        stale = [k for k in self.list(prefix) if k[len(prefix) + 1 :] not in new]
        for start in range(0, len(stale), 1000):
            chunk = [{"Key": self._key(k)} for k in stale[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk})

    def download_dir(self, prefix: str, local: Path) -> Path:
        local = Path(local)
        for key in self.list(prefix):
            dest = local / key[len(prefix) + 1 :]
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.client.download_file(self.bucket, self._key(key), str(dest))
            except Exception as e:
                raise self._error("read", key, e) from None
        return local

    def check_writable(self) -> None:
        probe = f".write-probe-{uuid.uuid4().hex[:8]}"
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(probe), Body=b"")
            self.client.delete_object(Bucket=self.bucket, Key=self._key(probe))
        except Exception as e:
            raise StoreError(
                f"store {self.url} is not writable ({type(e).__name__}: {e}): check the bucket, "
                "credentials and store.s3_endpoint_url"
            ) from None


def open_store(root: str, s3_endpoint_url: str | None = None) -> Store:
    """A store for a folder path or an ``s3://`` URL."""
    if root.startswith("s3://"):
        return S3Store(root, endpoint_url=s3_endpoint_url)
    if "://" in root and not root.startswith("file://"):
        raise StoreError(f"store root '{root}' is neither a folder nor an s3:// URL")
    return LocalStore(Path(root.removeprefix("file://")))
