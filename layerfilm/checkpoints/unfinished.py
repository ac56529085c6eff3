"""Saves still in progress: which checkpoints a run is writing now (for ``layerfilm watch``).

A checkpoint is *unfinished* when its own format shows that bytes are still to come: a
safetensors file shorter than its header says, a torch zip archive whose end record is not
written yet, a Hugging Face ``checkpoint-N/`` folder whose ``trainer_state.json`` (the
Trainer writes it last) has not landed while the run's other checkpoint folders have one, a
sharded checkpoint whose index names a shard not written yet.  What no format can show (a
legacy pickle, a file rewritten in place) is caught by time: a file is read only once its size
and modification time have held still for a while (:class:`Stillness`).

Nothing here reads tensor data: a header at most.
"""

from __future__ import annotations

import json
import struct
import time
import zipfile
from pathlib import Path, PurePath

from ..errors import CheckpointError
from .discover import CheckpointRef
from .formats import SAFETENSORS_SUFFIXES
from .storage import LOCAL, Storage

TRAINER_STATE = "trainer_state.json"
_ZIP_MAGIC = b"PK\x03\x04"
_FIRST_READ = 64 * 1024  # a safetensors header's length and (usually) the header, in one read


def why_unfinished(ref: CheckpointRef, states_expected: bool = False) -> str | None:
    """Why ``ref`` looks like a save still being written, or ``None`` when its format shows it
    complete (or cannot tell).  ``states_expected``: the run's other ``checkpoint-N/`` folders
    hold a ``trainer_state.json``, so one without it is a save the Trainer has not finished."""
    st = ref.storage
    folder = ref.path.parent
    if states_expected and _hf_folder(ref) and not st.is_file(folder / TRAINER_STATE):
        return f"{TRAINER_STATE} not written yet"
    try:
        files = ref.files()
    except OSError as e:
        return f"cannot list its files yet ({e.strerror or e})"
    for path in files:
        if not st.is_file(path):
            return f"{_name(path, folder)} not written yet"
        why = _file_unfinished(path, st)
        if why is not None:
            return f"{_name(path, folder)}: {why}"
    return None


def _hf_folder(ref: CheckpointRef) -> bool:
    return ref.path.name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                             "pytorch_model.bin.index.json")


def _name(path: PurePath, folder: PurePath) -> str:
    return path.name if path.parent == folder else str(path)


def _file_unfinished(path: PurePath, st: Storage) -> str | None:
    try:
        size = st.size(path)
        if path.suffix.lower() in SAFETENSORS_SUFFIXES:
            return _safetensors_unfinished(path, st, size)
        head = st.read(path, 0, 4)
    except (OSError, CheckpointError) as e:
        return f"cannot read yet ({getattr(e, 'strerror', None) or e})"
    if size == 0:
        return "empty so far"
    if head == _ZIP_MAGIC and st is LOCAL and not zipfile.is_zipfile(Path(path)):
        return "the archive's end is not written yet"
    return None


def _safetensors_unfinished(path: PurePath, st: Storage, size: int) -> str | None:
    if size < 8:
        return f"{size} bytes so far: its header is not written yet"
    first = st.read(path, 0, min(size, getattr(st, "first_read", _FIRST_READ)))  # one request
    (n,) = struct.unpack("<Q", first[:8])
    if 8 + n > size:
        return f"{size:,} bytes so far, its header alone takes {8 + n:,}"
    try:
        header = json.loads(first[8:8 + n] if 8 + n <= len(first) else st.read(path, 8, 8 + n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
                  default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None  # not a header being written: a damaged file, which reading it reports
    if 8 + n + end > size:
        return f"{size:,} of {8 + n + end:,} bytes written"
    return None


class Stillness:
    """Which checkpoints' files hold still: none modified in the last ``settle`` seconds, and
    none with another size or time than at the previous look (when there was one)."""

    def __init__(self, settle: float):
        self.settle = settle
        self._seen: dict[PurePath, str] = {}  # each file's identity at the previous look

    def still(self, ref: CheckpointRef) -> bool:
        try:
            files = [(p, ref.storage.identity(p)) for p in ref.files()]
        except (OSError, CheckpointError):
            return False
        ok = True
        for path, ident in files:
            if self._seen.get(path, ident) != ident or _modified_within(path, ref.storage, self.settle):
                ok = False
            self._seen[path] = ident
        return ok


def _modified_within(path: PurePath, st: Storage, seconds: float) -> bool:
    if st is not LOCAL:
        return False  # remote objects appear whole (an upload is one commit or one PUT)
    try:
        return time.time() - Path(path).stat().st_mtime < seconds
    except OSError:
        return True
