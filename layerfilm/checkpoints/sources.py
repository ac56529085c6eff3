"""Where the checkpoints are: a local folder or a URL, resolved into a :class:`Storage` and the
root path inside it that discovery searches."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

from ..errors import CheckpointError
from .storage import LOCAL, Storage
from .transfer import RemoteError, Transient

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def is_url(location: object) -> bool:
    """Whether ``location`` is a URL (``hf://``, ``s3://``, ``https://``, ...), not a path."""
    return isinstance(location, str) and bool(_URL.match(location))


@dataclasses.dataclass
class Source:
    """A storage, the root inside it, and what the storage itself left out (Hub refs that
    carry no step: ``(path, reason)``)."""

    storage: Storage
    root: PurePath
    url: str | None = None  # None for a local folder
    skipped: list[tuple[PurePath, str]] = dataclasses.field(default_factory=list)


def open_source(location: str | os.PathLike, storage_options: dict[str, Any] | None = None,
                revisions: str | None = None, keep_downloads: bool = False,
                pins: dict[str, str] | None = None) -> Source:
    """The storage and root for a folder or URL.

    ``storage_options`` go to fsspec (``s3://``, ...) or, for ``hf://``, may hold ``token``
    and ``endpoint``; ``revisions`` is ``--revisions`` (comma-separated globs of Hub ref
    names); ``pins`` maps Hub ref names to the commits a manifest recorded.  Raises
    :class:`CheckpointError` (one line naming the URL) when the place cannot be reached or
    read; a missing folder is left to discovery to name.
    """
    text = os.fspath(location)
    if not is_url(text):
        if revisions:
            raise CheckpointError("--revisions picks the revisions of an hf://ORG/REPO source; "
                                  "this is a local folder", text)
        return Source(LOCAL, Path(text))
    protocol = _URL.match(text).group(1).lower()
    options = dict(storage_options or {})
    try:
        if protocol == "hf":
            return _hub_source(text, options, revisions, keep_downloads, pins)
        if revisions:
            raise CheckpointError("--revisions picks the revisions of an hf://ORG/REPO source",
                                  text)
        from .fsspec_storage import FsspecStorage

        storage, root = FsspecStorage.from_url(text, options, keep_downloads)
        storage.fs  # noqa: B018 - the library is there and the options are accepted
        _probe(storage, root)
        return Source(storage, root, text)
    except (RemoteError, Transient) as e:
        raise CheckpointError(str(e), text) from None
    except TypeError as e:  # storage_options the library does not take
        raise CheckpointError(f"storage_options not accepted by {protocol}:// ({e})", text) from None


def _hub_source(url: str, options: dict[str, Any], revisions: str | None, keep: bool,
                pins: dict[str, str] | None) -> Source:
    from .hub import ROOT, HubStorage, _encode, parse_url

    if buckets_url(url):
        return _bucket_source(url, options, keep)
    repo_id, repo_type, revision, sub = parse_url(url)
    unknown = set(options) - {"token", "endpoint"}
    if unknown:
        raise RemoteError(f"storage_options for hf:// take token and endpoint, not "
                          f"{', '.join(sorted(unknown))}")
    patterns = tuple(p.strip() for p in (revisions or "").split(",") if p.strip())
    if patterns and revision is not None:
        raise RemoteError("--revisions picks among all revisions of hf://ORG/REPO; this URL "
                          f"names one ({revision})")
    storage = HubStorage(repo_id, repo_type, only=revision, patterns=patterns, revisions=pins,
                         token=options.get("token"), endpoint=options.get("endpoint"),
                         keep_downloads=keep)
    refs = storage.commits()
    if revision is None:
        if not refs:
            why = (f"no revision matches --revisions {revisions}" if patterns else
                   "no branch or tag names a training step (step1000, step1000-tokens4B, ...)")
            raise RemoteError(f"{why}; to film one revision's checkpoint-N/ folders use "
                              f"{storage.url}@REVISION")
        return Source(storage, ROOT, url, list(storage.skipped_refs))
    root = ROOT / _encode(revision)
    for part in [p for p in sub.split("/") if p]:
        root = root / part
    _probe(storage, root)
    return Source(storage, root, url)


def _bucket_source(url: str, options: dict[str, Any], keep: bool) -> Source:
    from .buckets import BucketStorage, parse_bucket

    bucket_id, sub = parse_bucket(url)
    unknown = set(options) - {"token", "endpoint"}
    if unknown:
        raise RemoteError(f"storage_options for hf://buckets take token and endpoint, not "
                          f"{', '.join(sorted(unknown))}")
    storage = BucketStorage(bucket_id, options.get("token"), options.get("endpoint"), keep)
    root = PurePosixPath("/" + sub) if sub else PurePosixPath("/")
    _probe(storage, root)
    return Source(storage, root, url)


def buckets_url(url: str) -> bool:
    """``hf://buckets/USER/NAME/...``: a Hugging Face Storage Bucket."""
    return url.lower().startswith("hf://buckets/")


def _probe(storage, root: PurePath) -> None:
    """List the root once, so that access problems -- and a server that kept failing after
    every retry -- are named now (a folder that is not there is discovery's to name)."""
    try:
        storage.listdir(root)
    except (RemoteError, Transient):
        raise
    except OSError:
        pass
