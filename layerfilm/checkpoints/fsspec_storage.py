"""Checkpoints behind any fsspec URL: ``s3://``, ``gs://``, ``az://``, ``https://``, ...

Configured the fsspec way, never by layerfilm flags: the environment (``FSSPEC_S3_ENDPOINT_URL``,
the AWS variables, ...) and ``storage_options`` (from the config file), handed to
``fsspec.url_to_fs``.  Ranged reads of ``s3://`` and ``http(s)://`` go through the library's
own client so the status, ``Content-Range`` and length of every answer can be checked (see
:mod:`.remote`); other protocols are read with ``cat_file(start=, end=)`` and checked by length.
"""

from __future__ import annotations

from pathlib import PurePath, PurePosixPath
from typing import Any

from .remote import WORKERS, RemoteStorage
from .transfer import (PREFIX_MAX, Answer, Entry, RemoteError, Transient, retrying, status_error,
                       transient)

# The library each protocol needs, for the one line that says what to install.
_NEEDS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs",
          "abfs": "adlfs", "abfss": "adlfs", "http": "aiohttp", "https": "aiohttp"}
_CHUNK = 1 << 20


class FsspecStorage(RemoteStorage):
    """Files under an fsspec URL.  Paths are the URL's path (``bucket/run/step-100``, or
    ``/run/step-100`` for http), shown with the protocol in front."""

    def __init__(self, protocol: str, base: str, storage_options: dict[str, Any] | None = None,
                 keep_downloads: bool = False):
        self.protocol = protocol
        self.base = base  # what goes in front of a path to make the URL
        self.storage_options = dict(storage_options or {})
        self._fs = None
        super().__init__(keep_downloads)

    @classmethod
    def from_url(cls, url: str, storage_options: dict[str, Any] | None = None,
                 keep_downloads: bool = False) -> tuple["FsspecStorage", PurePosixPath]:
        """The storage and root path for ``url``."""
        protocol = url.split("://", 1)[0].lower()
        rest = url.split("://", 1)[1]
        if protocol in ("http", "https"):
            host, _, path = rest.partition("/")
            return cls(protocol, f"{protocol}://{host}", storage_options,
                       keep_downloads), PurePosixPath("/" + path.rstrip("/"))
        return cls(protocol, f"{protocol}://", storage_options,
                   keep_downloads), PurePosixPath(rest.rstrip("/"))

    def _portable(self, state: dict) -> dict:
        state["_fs"] = None
        return state

    @property
    def fs(self):
        if self._fs is None:
            try:
                import fsspec
                import fsspec.config

                # FSSPEC_* variables are read when fsspec is imported: read them again now.
                fsspec.config.set_conf_env(fsspec.config.conf)
                options = dict(self.storage_options)
                if self.protocol in ("s3", "s3a"):
                    # layerfilm retries (and counts) itself; a dead endpoint fails fast.
                    config = dict(options.pop("config_kwargs", {}) or {})
                    config.setdefault("retries", {"total_max_attempts": 1})
                    config.setdefault("max_pool_connections", WORKERS)
                    options["config_kwargs"] = config
                self._fs = fsspec.filesystem(self.protocol, **options)
                if self.protocol in ("s3", "s3a"):
                    self._fs.retries = 1
            except ImportError as e:
                need = _NEEDS.get(self.protocol, f"the fsspec backend for {self.protocol}://")
                extra = {"gcsfs": "gcs", "adlfs": "azure"}.get(need, "remote")
                raise RemoteError(f"{self.protocol}:// needs {need}: pip install "
                                  f"'layerfilm[{extra}]' ({e})") from None
            except ValueError as e:
                raise RemoteError(f"{self.protocol}:// is not a protocol fsspec knows ({e})") from None
        return self._fs

    def display(self, path: PurePath) -> str:
        return self.base + str(path)

    def url(self, path: PurePath) -> str:
        return self.display(path)

    def _list(self, folder: PurePath) -> list[Entry]:
        """A folder's entries; a listing is retried as a read is (5xx, timeouts, dropped
        connections; a bounded number of times), so one dropped connection does not make a
        folder look missing."""
        return retrying(lambda: self._list_once(folder), f"listing of {self.display(folder)}",
                        self.traffic)

    def _list_once(self, folder: PurePath) -> list[Entry]:
        self.traffic.add(requests=1)
        try:
            infos = self.fs.ls(self.url(folder), detail=True)
        except FileNotFoundError:
            raise
        except PermissionError as e:
            raise RemoteError(f"access denied ({_first(e)})") from None
        except Exception as e:  # noqa: BLE001 - library errors become one line
            if transient(e) or (e.__cause__ is not None and transient(e.__cause__)):
                raise Transient(_first(e)) from None
            failure = _s3_error(e) if self.protocol in ("s3", "s3a") else None
            if isinstance(failure, Transient):
                raise failure from None  # s3fs hides a 5xx in the error's cause: retried
            if isinstance(e, OSError) and not _library_error(e):
                raise
            raise RemoteError(_first(e)) from None
        out = []
        for info in infos:
            name = PurePosixPath(str(info["name"]).rstrip("/")).name
            if not name or str(info["name"]).rstrip("/") == str(self.url(folder)).rstrip("/"):
                continue
            if info.get("type") == "directory":
                out.append(Entry(name, True))
                continue
            size = info.get("size")
            if size is None:  # http listings carry no sizes: ask (HEAD)
                self.traffic.add(requests=1)
                info = {**info, **self.fs.info(info["name"])}
                size = info.get("size")
            ident = str(info.get("ETag") or info.get("etag") or info.get("md5Hash")
                        or info.get("generation") or info.get("LastModified")
                        or info.get("Last-Modified") or info.get("last_modified") or "")
            extra = tuple((k, str(info[k]).strip('"')) for k in ("ETag", "etag", "generation")
                          if info.get(k))
            out.append(Entry(name, False, int(size or 0), ident.strip('"'), extra))
        return out

    def _fetch(self, path: PurePath, start: int, end: int | None, entry: Entry) -> Answer:
        if self.protocol in ("s3", "s3a"):
            return self._fetch_s3(path, start, end, entry)
        if self.protocol in ("http", "https"):
            return self._fetch_http(path, start, end, entry)
        # Other backends do not show the status: the length is what can be checked.
        try:
            data = self.fs.cat_file(self.url(path), start=start, end=end)
        except FileNotFoundError:
            raise RemoteError("not found") from None
        except PermissionError as e:
            raise RemoteError(f"access denied ({_first(e)})") from None
        if end is None:
            return Answer(200, None, len(data), [data])
        if len(data) == end - start:
            return Answer(206, f"bytes {start}-{end - 1}/{entry.size}", len(data), [data])
        return Answer(200 if len(data) == entry.size else 206, None, len(data), [data])

    def _fetch_s3(self, path: PurePath, start: int, end: int | None, entry: Entry) -> Answer:
        from fsspec.asyn import sync

        fs = self.fs
        bucket, key, _ = fs.split_path(self.url(path))
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if end is not None:
            kwargs["Range"] = f"bytes={start}-{end - 1}"
        if entry.ident:
            kwargs["IfMatch"] = f'"{entry.ident}"'

        async def get():
            try:
                resp = await fs._call_s3("get_object", **kwargs)
            except Exception as e:  # noqa: BLE001 - classified in _s3_error
                raise _s3_error(e) from None
            body = resp["Body"]
            try:
                status = resp["ResponseMetadata"]["HTTPStatusCode"]
                length = resp.get("ContentLength")
                limit = end if status == 200 and end is not None and start == 0 \
                    and end <= PREFIX_MAX else None
                chunks, n = [], 0
                while limit is None or n < limit:  # bounded: one block, or one whole file
                    chunk = await body.read(_CHUNK if limit is None else min(_CHUNK, limit - n))
                    if not chunk:
                        break
                    chunks.append(chunk)
                    n += len(chunk)
            finally:
                body.close()
            return Answer(status, resp.get("ContentRange"), length, chunks)

        return sync(fs.loop, get)

    def _fetch_http(self, path: PurePath, start: int, end: int | None, entry: Entry) -> Answer:
        from fsspec.asyn import sync

        fs = self.fs
        headers = {"Accept-Encoding": "identity"}
        if end is not None:
            headers["Range"] = f"bytes={start}-{end - 1}"

        async def get():
            session = await fs.set_session()
            async with session.get(fs.encode_url(self.url(path)), headers=headers,
                                   **fs.kwargs) as r:
                if r.status not in (200, 206):
                    return Answer(r.status, None, None, [])
                length = r.headers.get("Content-Length")
                length = int(length) if length and length.isdigit() else None
                if r.status == 200 and end is not None and start == 0 and end <= PREFIX_MAX:
                    chunks, n = [], 0  # Range ignored: read the first bytes only
                    while n < end:
                        chunk = await r.content.read(min(_CHUNK, end - n))
                        if not chunk:
                            break
                        chunks.append(chunk)
                        n += len(chunk)
                    return Answer(200, None, length, chunks)
                return Answer(r.status, r.headers.get("Content-Range"), length,
                              [await r.read()])

        return sync(fs.loop, get)


def _s3_error(e: Exception) -> Exception:
    """An s3fs/botocore failure as :class:`RemoteError` (final) or left to retry."""
    if transient(e):
        return e
    if isinstance(e, FileNotFoundError):
        return RemoteError("not found (NoSuchKey)")
    if isinstance(e, PermissionError):
        return RemoteError(f"access denied ({_first(e)})")
    response = getattr(e.__cause__, "response", None) or {}
    code = response.get("Error", {}).get("Code")
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code == "PreconditionFailed":
        return RemoteError("changed while being read (its ETag no longer matches)")
    if isinstance(status, int):
        return status_error(status, "", f": {code}" if code else "")
    return RemoteError(_first(e))


def _first(e: BaseException) -> str:
    cause = e.__cause__ or e
    text = str(cause).strip() or str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def _library_error(e: BaseException) -> bool:
    return any(c.__module__.split(".")[0] in ("botocore", "aiohttp", "aiobotocore")
               for c in type(e).__mro__)
