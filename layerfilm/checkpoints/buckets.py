"""Checkpoints in a Hugging Face Storage Bucket: ``hf://buckets/USER/NAME/run/``.

A bucket is non-versioned storage: files carry a size, a modification time and a Xet content
hash (the identity used for caching and manifests).  Listings come from huggingface_hub's
``list_bucket_tree``; bytes from ranged GETs of ``/buckets/USER/NAME/resolve/<path>`` (what
``HfFileSystem`` reads), checked like every other remote read.  Buckets also speak an
S3-compatible API: ``s3://`` with the bucket's endpoint works through :mod:`.fsspec_storage`.
"""

from __future__ import annotations

import os
from pathlib import PurePath, PurePosixPath
from typing import Any
from urllib.parse import quote

from .hub import _LOGIN, http_get
from .remote import RemoteStorage
from .transfer import Answer, Entry, RemoteError, retrying, status_error


class BucketStorage(RemoteStorage):
    """Files of one bucket; paths are ``/`` + the path inside the bucket."""

    def __init__(self, bucket_id: str, token: str | None = None, endpoint: str | None = None,
                 keep_downloads: bool = False):
        self.bucket_id, self.token = bucket_id, token
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
        super().__init__(keep_downloads)

    def display(self, path: PurePath) -> str:
        inside = str(path).strip("/")
        return f"hf://buckets/{self.bucket_id}" + (f"/{inside}" if inside else "")

    def _api(self):
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token)

    def _call(self, what: str, fn):
        from huggingface_hub import errors

        def once():
            self.traffic.add(requests=1)
            try:
                return fn()
            except errors.BucketNotFoundError:
                raise RemoteError(f"no such bucket, or it is private and you have no access: "
                                  f"{_LOGIN}") from None
            except errors.HfHubHTTPError as e:
                status = getattr(e.response, "status_code", None) if e.response is not None else None
                if status == 404:
                    raise FileNotFoundError(what) from None
                if isinstance(status, int):
                    raise status_error(status, "", f" ({what})") from None
                raise

        return retrying(once, what, self.traffic)

    def _list(self, folder: PurePath) -> list[Entry]:
        prefix = str(folder).strip("/")
        items = self._call(f"files of {self.display(folder)}", lambda: list(
            self._api().list_bucket_tree(self.bucket_id, prefix=prefix or None, recursive=False)))
        out = []
        for item in items:
            path = str(item.path).strip("/")
            if path == prefix or (prefix and not path.startswith(prefix + "/")):
                continue
            name = PurePosixPath(path).name
            if not hasattr(item, "size"):
                out.append(Entry(name, True))
                continue
            xet = str(getattr(item, "xet_hash", "") or "")
            mtime = getattr(item, "mtime", None)
            out.append(Entry(name, False, int(item.size), f"{xet}|{mtime}",
                             (("xet_hash", xet),) + ((("mtime", str(mtime)),) if mtime else ())))
        if not out and prefix:
            raise FileNotFoundError(prefix)
        return out

    def file_url(self, path: PurePath) -> str:
        return f"{self.endpoint}/buckets/{self.bucket_id}/resolve/{quote(str(path).strip('/'))}"

    def _fetch(self, path: PurePath, start: int, end: int | None, entry: Entry) -> Answer:
        from huggingface_hub.utils import build_hf_headers

        return http_get(self.file_url(path), build_hf_headers(token=self.token), start, end)


def parse_bucket(url: str) -> tuple[str, str]:
    """``hf://buckets/USER/NAME/sub/dir`` -> ``("USER/NAME", "sub/dir")``."""
    parts = url.split("://", 1)[1].strip("/").split("/")[1:]
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise RemoteError("a bucket URL looks like hf://buckets/USER/NAME[/FOLDER]")
    return f"{parts[0]}/{parts[1]}", "/".join(parts[2:])


def bucket_source(url: str, options: dict[str, Any], keep: bool):
    from .sources import Source, _probe

    bucket_id, sub = parse_bucket(url)
    unknown = set(options) - {"token", "endpoint"}
    if unknown:
        raise RemoteError(f"storage_options for hf://buckets take token and endpoint, not "
                          f"{', '.join(sorted(unknown))}")
    storage = BucketStorage(bucket_id, options.get("token"), options.get("endpoint"), keep)
    root = PurePosixPath("/" + sub) if sub else PurePosixPath("/")
    _probe(storage, root)
    return Source(storage, root, url)
