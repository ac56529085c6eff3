"""Names and folders -> checkpoint references ordered by training step.

A checkpoint is one file (safetensors or a torch pickle), a Hugging Face checkpoint folder
(``checkpoint-N/`` holding ``model.safetensors``, ``pytorch_model.bin`` or a sharded
``*.index.json``) or a PyTorch Distributed Checkpoint folder (``.metadata`` + ``*.distcp``).
Discovery lists folders through a :class:`~layerfilm.checkpoints.storage.Storage`; it opens a
``trainer_state.json`` when a folder name carries no step, and a file whose name carries none
to find the step recorded inside it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path, PurePath
from typing import Iterator

from ..errors import CheckpointError
from ..untrusted import load_json, within
from .formats import CHECKPOINT_SUFFIXES, HF_WEIGHTS, SAFETENSORS_SUFFIXES, open_checkpoint
from .storage import LOCAL, LocalStorage, Storage

# Keyword-tagged numbers win over bare numbers, so "epoch=1-step=300" is step 300.
_STEP_PATTERNS = (
    re.compile(r"(?:global_step|step|iter|iteration|it)[_\-=]?0*(\d+)", re.I),
    re.compile(r"(?:checkpoint|ckpt)[_\-=]?0*(\d+)", re.I),
)
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")
# Tokens seen, in names: OLMo "step1000-tokens4B", "tokens_1.5B", FineWeb ablations "step-001000-2BT".
_TOKEN_PATTERNS = (
    re.compile(r"(?:^|[^a-z])tok(?:en)?s?[_\-=]?(\d+(?:\.\d+)?)([KMBT])(?![a-z])", re.I),
    re.compile(r"(?:^|[^a-z0-9.])(\d+(?:\.\d+)?)([KMB])T(?![a-z])", re.I),
)
_UNITS = {"K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}

# Files trainers write beside the weights that are not the model (HF Trainer, Lightning, ...).
_NOT_WEIGHTS = re.compile(r"^(?:optimizer|optim|scheduler|lr_scheduler|rng_state|training_args|"
                          r"scaler|trainer_state|ema_state)", re.I)
# The Hugging Face Trainer saves into tmp-checkpoint-N/ and renames it checkpoint-N/ when done.
_STAGING = re.compile(r"^tmp[-_]checkpoint", re.I)
_SHARD = re.compile(r"-\d+-of-\d+$")
_MAX_DEPTH = 3  # sub-folder levels searched below the folder given
GONE = "no longer there: deleted or moved after it was listed"


@dataclasses.dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint, the training step it was saved at, and where its bytes are.

    ``path`` is a weights file, a sharded checkpoint's ``*.index.json`` or a
    Distributed Checkpoint folder, inside ``storage``; ``kind`` names the layout
    (``layerfilm info`` prints it).
    """

    path: PurePath
    step: int
    kind: str = ""
    storage: Storage = dataclasses.field(default=LOCAL, compare=False, repr=False)
    tokens: int | None = None  # training tokens seen, when the name (or the trainer) says
    run: str = dataclasses.field(default="", compare=False)  # see run_name; "" at the top

    def open(self):
        """The checkpoint opened for lazy reading (see :func:`~layerfilm.checkpoints.open_checkpoint`)."""
        try:
            return open_checkpoint(self.path, self.storage)
        except CheckpointError:
            self._still_there()
            raise

    def files(self) -> list[PurePath]:
        """Every file this checkpoint is made of (for cache keys and manifests)."""
        st = self.storage
        if st.is_dir(self.path):
            return [p for p in st.listdir(self.path) if st.is_file(p)]
        if self.path.name.endswith(".index.json"):
            try:
                raw = st.read(self.path, 0, st.size(self.path))
                shards = set(load_json(raw)["weight_map"].values())
                return [self.path] + sorted(within(self.path.parent, str(s)) for s in shards)
            except (OSError, ValueError, KeyError, TypeError, AttributeError, CheckpointError):
                return [self.path]  # opening it names the problem
        return [self.path]

    def file_identities(self) -> tuple[tuple[PurePath, str], ...]:
        """Each of its files with what changes when that file's contents may have changed."""
        try:
            return tuple((p, self.storage.identity(p)) for p in self.files())
        except OSError as e:
            self._still_there()
            raise CheckpointError(f"cannot read: {e.strerror or e}", self.storage.display(self.path)
                                  ) from None

    def identity(self, files: tuple[tuple[PurePath, str], ...] | None = None) -> str:
        """What changes when any of its files may have changed (cache keys): now, or as
        ``files`` (:meth:`file_identities` taken earlier) says."""
        files = self.file_identities() if files is None else files
        return "\n".join(f"{ident}|{self.step}" for _, ident in files)

    def _still_there(self) -> None:
        """Raise :data:`GONE` when the checkpoint is no longer where discovery listed it: a
        trainer rotating its checkpoints (``save_total_limit``) deletes them while a film is
        made, and "cannot read: No such file" would not say so."""
        if not (self.storage.is_file(self.path) or self.storage.is_dir(self.path)):
            raise CheckpointError(GONE, self.storage.display(self.path)) from None


def parse_step(path: PurePath, root: PurePath | None = None) -> int | None:
    """The training step encoded in a checkpoint's name, or ``None``.

    The file's stem is tried first (a keyword-tagged number such as ``step_100``,
    else its last number), then each parent folder up to ``root``: a tagged
    number (``checkpoint-300/model.safetensors`` is step 300) or a name that is
    only a number (``300/model.safetensors``).
    """
    found = _step_at(path, root)
    return None if found is None else found[0]


def _name_parts(path: PurePath, root: PurePath | None) -> list[str]:
    """The names :func:`parse_step` reads: the file's stem, then each folder up to ``root``."""
    parts = [path.stem if path.suffix in CHECKPOINT_SUFFIXES or path.suffix == ".json" else path.name]
    for parent in path.parents:
        if root is not None and parent == root:
            break
        parts.append(parent.name)
    return parts


def _step_at(path: PurePath, root: PurePath | None) -> tuple[int, int, int] | None:
    """``(step, part, start)``: the step, which of :func:`_name_parts` holds it and where its
    text begins there (what comes before it names the run, see :func:`run_name`)."""
    for i, part in enumerate(_name_parts(path, root)):
        for pattern in _STEP_PATTERNS:
            found = list(pattern.finditer(part))
            if found:
                return int(found[-1].group(1)), i, found[-1].start()
        if i == 0:
            m = _LAST_NUMBER.search(part)
            if m:
                return int(m.group(1)), 0, m.start()
        elif part.isdigit():
            return int(part), i, 0
    return None


# Counters and metrics that trainers put in front of the step (Lightning's "epoch=1-",
# "val_loss=0.32-", a date): they change from one checkpoint to the next of one run.
_NOT_A_RUN = re.compile(r"(?:epoch|ep)[_\-=]?\d+|[a-z_]+=[-+.\de]+|\d+\.\d+", re.I)


def run_name(path: PurePath, root: PurePath, step_in_name: bool = True) -> str:
    """Which run a checkpoint belongs to, as ``--run`` selects it: the folders between ``root``
    and the name that carries the step, then what that name says before its step, counters
    left out (``run1/checkpoint-50/model.safetensors`` -> ``run1``; ``runB-step150.safetensors``
    -> ``runB``; ``step_000100.safetensors`` -> ``""``).  ``step_in_name=False``: the step came
    from inside the file or a ``trainer_state.json``, so the folders above the checkpoint alone
    name the run."""
    if path == root:
        return ""
    parts = _name_parts(path, root)
    found = _step_at(path, root) if step_in_name else None
    if found is None:  # a Hugging Face checkpoint is its folder: the run is above it
        folders, before = parts[2 if path.name in HF_WEIGHTS else 1:], ""
    else:
        folders, before = parts[found[1] + 1:], parts[found[1]][:found[2]]
    before = _NOT_A_RUN.sub("", before).strip("-_=. ")
    return "/".join([*reversed(folders), *([before] if before else [])])


def in_run(run: str, name: str) -> bool:
    """Whether a checkpoint of ``run`` is picked by ``--run name``: the run itself, or any run
    in the folder ``name`` (``.`` picks the checkpoints at the top, outside every folder)."""
    name = name.strip().strip("/")
    name = "" if name == "." else name
    return run == name or (bool(name) and run.startswith(name + "/"))


def shown_run(run: str) -> str:
    """A run's name as ``--run`` takes it (``.`` for the checkpoints at the top)."""
    return run or "."


def parse_tokens(name: str) -> int | None:
    """Training tokens seen, as a name states them (``tokens4B`` -> 4,000,000,000, ``2BT``,
    ``tokens1.5B``), or ``None``."""
    for pattern in _TOKEN_PATTERNS:
        found = pattern.findall(name)
        if found:
            number, unit = found[-1]
            return round(float(number) * _UNITS[unit.upper()])
    return None


def _tokens_in(path: PurePath, root: PurePath) -> int | None:
    """:func:`parse_tokens` of the checkpoint's name, else of its folders up to ``root``."""
    for part in [path.name, *(p.name for p in path.parents if p != root and root in p.parents)]:
        tokens = parse_tokens(part)
        if tokens is not None:
            return tokens
    return None


def _trainer_state_step(storage: Storage, folder: PurePath) -> int | None:
    """``global_step`` from a Hugging Face ``trainer_state.json`` in ``folder``."""
    path = folder / "trainer_state.json"
    try:
        step = load_json(storage.read(path, 0, storage.size(path))).get("global_step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) and step >= 0 else None


def _step_inside(storage: Storage, path: PurePath) -> int | None:
    """The step a step-less file records inside it: a safetensors header's ``step`` /
    ``global_step`` / ``iter_num`` metadata, a torch pickle's ``global_step`` / ``iter_num``
    (Lightning's ``last.ckpt``, nanoGPT's ``ckpt.pt``)."""
    if storage.is_dir(path) or path.name.endswith(".index.json"):
        return None
    try:
        meta = open_checkpoint(path, storage).metadata
    except CheckpointError:
        return None
    for key in ("step", "global_step", "iter_num"):
        value = meta.get(key, "")
        if value.isdigit():
            return int(value)
    return None


def _identity(storage: Storage, path: PurePath) -> object:
    """What names a file or folder whatever symbolic links lead to it: ``(st_dev, st_ino)`` on
    this machine, the path itself in storages that have no links."""
    if isinstance(storage, LocalStorage):
        try:
            st = os.stat(path)
            return st.st_dev, st.st_ino
        except OSError:
            pass
    return path


def _find_units(storage: Storage, root: PurePath) -> Iterator[tuple[PurePath, str, str | None]]:
    """``(path, kind, why_not)`` for every checkpoint-looking thing under ``root``.

    ``why_not`` is a reason to skip it (``None`` for a usable checkpoint).  A folder reached
    again through a symbolic link (``self -> .``, a loop, a second name) is searched once.
    """
    seen: set = set()

    def visit(folder: PurePath, depth: int) -> Iterator[tuple[PurePath, str, str | None]]:
        key = _identity(storage, folder)
        if key in seen:
            return
        seen.add(key)
        try:
            entries = storage.listdir(folder)
        except OSError:
            return
        names = {p.name for p in entries}
        if ".metadata" in names and any(p.suffix == ".distcp" for p in entries):
            yield folder, "Distributed Checkpoint (.metadata + .distcp)", None
            return
        hf = next((n for n in HF_WEIGHTS if n in names and storage.is_file(folder / n)), None)
        if hf is not None:
            kind = {HF_WEIGHTS[0]: "sharded safetensors (model.safetensors.index.json)",
                    HF_WEIGHTS[1]: "safetensors",
                    HF_WEIGHTS[2]: "sharded torch pickles (pytorch_model.bin.index.json)",
                    HF_WEIGHTS[3]: "torch pickle (pytorch_model.bin)"}[hf]
            if "trainer_state.json" in names:
                kind = f"Hugging Face Trainer, {kind}"
            yield folder / hf, kind, None
        indexed = any(n.endswith(".index.json") for n in names)
        for p in entries:
            if p.name.startswith("."):
                continue
            if storage.is_dir(p):
                if _STAGING.match(p.name):
                    yield p, "", "a save in progress (the Trainer's staging folder)"
                    continue
                if depth < _MAX_DEPTH:
                    yield from visit(p, depth + 1)
                continue
            if p.suffix.lower() not in CHECKPOINT_SUFFIXES or _NOT_WEIGHTS.match(p.name):
                continue
            if hf is not None:
                continue  # other weights beside a Hugging Face checkpoint's own (adapters, ...)
            if _SHARD.search(p.stem):
                if not indexed:
                    yield p, "", "a shard without its index (*.index.json)"
                continue
            kind = ("safetensors" if p.suffix.lower() in SAFETENSORS_SUFFIXES
                    else f"torch pickle ({p.suffix.lower()})")
            yield p, kind, None

    yield from visit(root, 0)


def discover(folder: str | os.PathLike | PurePath, skip_bad: bool = False, storage: Storage = LOCAL,
             run: str | None = None, few: bool = False
             ) -> tuple[list[CheckpointRef], list[tuple[PurePath, str]]]:
    """Checkpoints under ``folder`` (up to three sub-folders deep), ordered by step.

    Finds single files, Hugging Face checkpoint folders (the step from the folder name, else
    ``trainer_state.json``) and Distributed Checkpoint folders; with ``run``, only those of that
    run (:func:`in_run`).  Returns ``(checkpoints, skipped)`` where ``skipped`` lists what looks
    like weights but cannot be placed (no step in its name), with the reason.  Raises
    :class:`CheckpointError` when there is nothing to film or two checkpoints claim the same
    step (with ``skip_bad`` the later one is skipped instead); ``few``: fewer than two (or
    none, or no folder yet) is no error but what there is (a run that has just started).
    """
    root = folder if isinstance(folder, PurePath) else Path(folder)
    if not storage.is_dir(root):
        if few and not storage.is_file(root):
            return [], []
        if storage.is_file(root):
            raise CheckpointError("is a file; give the folder that holds the checkpoints",
                                  storage.display(root))
        raise CheckpointError("no such folder", storage.display(root))
    found: dict[int, CheckpointRef] = {}
    inside: set[int] = set()  # steps read from inside a step-less file (last.ckpt, ...)
    skipped: list[tuple[PurePath, str]] = []
    runs: set[str] = set()  # every run seen, for a --run that picks none
    for path, kind, why_not in _find_units(storage, root):
        if why_not is not None:
            skipped.append((path, why_not))
            continue
        step = parse_step(path, root) if path != root else 0  # the folder is one checkpoint
        named = run_name(path, root, step is not None)
        runs.add(named)
        if run is not None and not in_run(named, run):
            continue  # before the same-step check: two runs' steps often collide
        if step is None and kind.startswith("Hugging Face Trainer"):
            step = _trainer_state_step(storage, path.parent)
        from_inside = step is None
        if step is None:
            step = _step_inside(storage, path)
        if step is None:
            skipped.append((path, "no training step in its name or inside it"))
            continue
        if step in found and (from_inside or step in inside):
            # A copy such as Lightning's last.ckpt: the checkpoint that names its step wins.
            keep, drop = (found[step].path, path) if from_inside else (path, found[step].path)
            skipped.append((drop, f"its step ({step}) is that of {storage.display(keep)}"))
            if from_inside:
                continue
            inside.discard(step)
        elif step in found and _identity(storage, path) == _identity(storage, found[step].path):
            # The same file under a second name (a symbolic link): one checkpoint, not two.
            skipped.append((path, f"the same file as {storage.display(found[step].path)}"))
            continue
        elif step in found:
            problem = f"has the same step ({step}) as {storage.display(found[step].path)}"
            if not skip_bad:
                raise CheckpointError(problem + _same_step_way_out(found[step].run, named),
                                      storage.display(path))
            skipped.append((path, problem))
            continue
        if from_inside:
            inside.add(step)
        found[step] = CheckpointRef(path, step, kind, storage, _tokens_in(path, root), named)
    refs = [found[s] for s in sorted(found)]
    if few and len(refs) < 2:
        return refs, skipped
    if not refs and run is not None:
        raise CheckpointError(f"--run {run} picks no checkpoint; the runs here: "
                              f"{', '.join(sorted(shown_run(r) for r in runs)) or 'none'}",
                              storage.display(root))
    if not refs:
        raise CheckpointError(
            "no checkpoints found (looked for *.safetensors, *.pt, *.pth, *.bin, *.ckpt named "
            "with their training step, e.g. step_000100.safetensors, Hugging Face checkpoint-N/ "
            "folders and Distributed Checkpoint folders)",
            storage.display(root),
        )
    if len(refs) < 2:
        also = "".join(f"; {_relative(p, root)} was left out: {why}" for p, why in skipped[:3])
        raise CheckpointError(
            f"only one checkpoint ({_relative(refs[0].path, root)}){also}; a film needs at least two",
            storage.display(root),
        )
    return refs, skipped


def _same_step_way_out(run: str, other: str) -> str:
    """What to do about two checkpoints with one step: pick a run when their names say they
    are two, else leave the second out."""
    if run != other:
        return (f"; if they are two runs, film one with --run {shown_run(run)} or "
                f"--run {shown_run(other)}, else --skip-bad leaves this one out")
    return "; --skip-bad leaves this one out"


def _relative(path: PurePath, root: PurePath) -> str:
    return "the folder itself" if path == root else str(path.relative_to(root))


def select_steps(refs: list[CheckpointRef], start: int | None = None, stop: int | None = None,
                 every: int | None = None) -> list[CheckpointRef]:
    """The keyframes ``--steps START:STOP:EVERY`` picks: steps in ``[start, stop]`` (both
    inclusive), each at least ``every`` steps after the previous one kept."""
    kept: list[CheckpointRef] = []
    for ref in refs:
        if (start is not None and ref.step < start) or (stop is not None and ref.step > stop):
            continue
        if every is not None and kept and ref.step - kept[-1].step < every:
            continue
        kept.append(ref)
    return kept
