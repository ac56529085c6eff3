"""Checkpoints in a Hugging Face Storage Bucket: ``hf://buckets/USER/NAME/run/``.

A bucket is non-versioned storage: files carry a size, a modification time and a Xet content
hash (the identity used for caching and manifests).  Listings come from huggingface_hub's
``list_bucket_tree``; bytes from ranged GETs of ``/buckets/USER/NAME/resolve/<path>`` (what
``HfFileSystem`` reads), checked like every other remote read.  Buckets also speak an
S3-compatible API: ``s3://`` with the bucket's endpoint works through :mod:`.fsspec_storage`.
"""

from __future__ import annotations

from pathlib import PurePath, PurePosixPath
from urllib.parse import quote

from .hub import _LOGIN, HubClient, http_get
from .transfer import Answer, Entry, RemoteError


class BucketStorage(HubClient):
    """Files of one bucket; paths are ``/`` + the path inside the bucket."""

    def __init__(self, bucket_id: str, token: str | None = None, endpoint: str | None = None,
                 keep_downloads: bool = False):
        self.bucket_id = bucket_id
        super().__init__(token, endpoint, keep_downloads)

    def display(self, path: PurePath) -> str:
        inside = str(path).strip("/")
        return f"hf://buckets/{self.bucket_id}" + (f"/{inside}" if inside else "")

    def _failure(self, error: Exception, what: str, revision: str | None) -> Exception | None:
        from huggingface_hub import errors

        if isinstance(error, errors.BucketNotFoundError):
            return RemoteError(f"no such bucket, or it is private and you have no access: {_LOGIN}")
        response = getattr(error, "response", None)
        if getattr(response, "status_code", None) == 404:
            return FileNotFoundError(what)
        return None

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
        return http_get(self.file_url(path), self._headers(), start, end)


def parse_bucket(url: str) -> tuple[str, str]:
    """``hf://buckets/USER/NAME/sub/dir`` -> ``("USER/NAME", "sub/dir")``."""
    parts = url.split("://", 1)[1].strip("/").split("/")[1:]
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise RemoteError("a bucket URL looks like hf://buckets/USER/NAME[/FOLDER]")
    return f"{parts[0]}/{parts[1]}", "/".join(parts[2:])
