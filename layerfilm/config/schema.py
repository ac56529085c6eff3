"""The user's choices as frozen dataclasses, validated in one place.

:class:`Selection` is what every command shares: which checkpoints, which keyframes, which
tensors and points.  :class:`RenderConfig`, :class:`StatsConfig` and :class:`InfoConfig` add
what each command needs.  :func:`~layerfilm.config.validate.validate` checks every field of
any of them, by name, in one table; an error carries the field, so a value that came from a config
file is blamed on that file and key.  ``config.validated()`` runs it once per config object;
from then on the stages trust it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .validate import validate
from .values import REBEL_Z, SETTLE_FRACTION, SUFFIXES, Remote, parse_memory, parse_steps


class _Validated:
    def validated(self):
        """Return ``self`` after :func:`validate` (run once per object); raise
        :class:`ConfigError`."""
        if not getattr(self, "_valid", False):
            validate(self)
            object.__setattr__(self, "_valid", True)
        return self


@dataclasses.dataclass(frozen=True, kw_only=True)
class Selection(_Validated):
    """What is drawn or measured, shared by ``render``, ``info`` and ``stats``.

    ``checkpoints``: the folder, or a :class:`Remote` URL; ``steps="START:STOP:EVERY"``
    picks keyframes (:attr:`step_range`, see ``checkpoints.select_steps``); ``points``/
    ``tensor``/``layer_pattern`` decide the panels and their dots (``extract.plan_panels``), at
    most ``max_points`` a panel, subsampled with ``seed``; ``skip_bad`` leaves out unreadable
    checkpoints instead of stopping; ``run`` picks one training run of several in the folder
    (``checkpoints.discover.in_run``); ``max_memory`` (text such as ``"8G"``, see
    :attr:`memory_budget`) bounds the memory that reading the drawn points may take.  Remote
    sources: ``revisions`` (globs of Hub ref names),
    ``storage_options`` (fsspec's, from a config file only), ``keep_downloads`` (keep whole
    files that had to be downloaded).
    """

    checkpoints: Path | Remote | None = None
    points: str = "neurons"
    tensor: str | None = None
    max_points: int = 2000
    seed: int = 0
    steps: str | None = None  # kept as text, so config files and manifests hold it as typed
    layer_pattern: str | None = None
    skip_bad: bool = False
    run: str | None = None
    revisions: str | None = None
    keep_downloads: bool = False
    storage_options: dict[str, Any] | None = None  # a config-file table, never a flag
    max_memory: str | None = None  # kept as text, as typed; None: the memory available now
    # --points activations: the probe text (one sequence a line) whose tokens are the dots, the
    # token positions drawn of each line ("all", or indices such as "-1" or "0,2"), and where the
    # model's config and tokenizer are when they are not beside the checkpoints (also --prompt's)
    probe: Path | None = None
    probe_positions: str = "all"
    model_config: Path | None = None  # a folder with the model's config.json
    tokenizer: Path | None = None  # a folder with the tokenizer's files

    @property
    def memory_budget(self) -> int | None:
        """``max_memory`` in bytes, or ``None`` (then the memory available when planning)."""
        return None if self.max_memory is None else parse_memory(self.max_memory)

    @property
    def step_range(self) -> tuple[int | None, int | None, int | None] | None:
        """``steps`` parsed: ``(start, stop, every)``, each ``None`` when left out."""
        return None if self.steps is None else parse_steps(self.steps)

    @property
    def selection(self) -> "Selection":
        """Just the :class:`Selection` fields of this config."""
        return Selection(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Selection)})


class _Prompting:
    """What ``render`` and ``stats`` share for ``--prompt`` (fields ``prompt``, ``prompts``,
    ``max_new_tokens``, ``model_config``, ``tokenizer``)."""

    @property
    def all_prompts(self) -> list[str]:
        """``prompt`` then the lines of the ``prompts`` file (blank ones skipped), each with its
        whitespace collapsed."""
        out = [" ".join(p.split()) for p in self.prompt]
        if self.prompts is not None:
            out += [" ".join(line.split()) for line in
                    self.prompts.read_text(encoding="utf-8").splitlines() if line.strip()]
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class RenderConfig(_Prompting, Selection):
    """Everything that decides what a film looks like.

    ``frames_per_keyframe=None`` means one keyframe per second (= ``fps``);
    ``timeline="step"`` spaces keyframes by training step instead of evenly.
    ``prompt``/``prompts``: texts each keyframe's checkpoint continues greedily (at most
    ``max_new_tokens`` tokens), shown as its caption (:mod:`~layerfilm.completions`), with the
    model's config from ``model_config`` and its tokenizer from ``tokenizer`` when they are not
    beside the checkpoints.
    """

    output: Path | None = None
    fps: int = 25
    frames_per_keyframe: int | None = None
    size: tuple[int, int] = (1280, 720)
    projection: str = "pca"
    fourier_ref: int | None = None  # --projection fourier: the step whose plane is used
    cmap: str = "inferno"
    color_scale: str = "log"
    jobs: int = 1
    cache: bool = True
    frames_dir: Path | None = None
    loss_strip: bool = False
    metrics: Path | None = None
    drift: bool = False
    order: str = "film"
    settle_threshold: float | None = None
    settle_fraction: float = SETTLE_FRACTION
    rebel_z: float = REBEL_Z
    stills_dir: Path | None = None
    stills_every: int | None = None  # None: about a dozen tiles
    preview: Path | None = None  # a small lossy H.264 .mp4 made from the same frames
    html: Path | None = None  # the viewer page: one self-contained HTML file (layerfilm.viewer)
    timeline: str = "keyframe"
    point_size: float | None = None  # None: from each panel's size and number of dots
    scale: str = "panel"
    cues: bool = True  # per-panel activity, settled and rebel marks
    title: str | None = None  # None: the run's folder name
    caption: str | None = None
    captions: Path | None = None
    tokens_per_step: int | None = None
    prompt: tuple[str, ...] = ()  # --prompt, repeatable: each keyframe's greedy continuation
    prompts: Path | None = None  # --prompts FILE: one prompt a line
    max_new_tokens: int = 12
    label_tokens: tuple[str, ...] = ()  # --points activations: tokens whose text is drawn beside their dot
    scheduler: str | None = None  # a Dask scheduler's address (else $DASK_SCHEDULER_ADDRESS)
    verify_inputs: bool = False  # the manifest hashes every byte of every checkpoint

    @property
    def format(self) -> str:
        return SUFFIXES[self.output.suffix.lower()]

    @property
    def keyframe_frames(self) -> int:
        return self.frames_per_keyframe or self.fps

    @property
    def needs_drift(self) -> bool:
        """Whether the film draws numbers measured on the weights (cues, drift bars, settle
        order)."""
        return self.cues or self.drift or self.order == "settle" or self.html is not None


@dataclasses.dataclass(frozen=True, kw_only=True)
class StatsConfig(_Prompting, Selection):
    """What ``layerfilm stats`` measures and where it writes (``out``: a folder).

    ``projection`` picks whose cached layouts fill the layout columns; ``layouts`` computes
    them when none are cached; ``prompt``/``prompts`` (as for render) add each keyframe's
    completions as ``completions.csv``.
    """

    out: Path = Path("layerfilm-stats")
    settle_threshold: float | None = None
    settle_fraction: float = SETTLE_FRACTION
    rebel_z: float = REBEL_Z
    projection: str = "pca"
    fourier_ref: int | None = None
    layouts: bool = False
    prompt: tuple[str, ...] = ()  # as for render: completions.csv, one row per keyframe and prompt
    prompts: Path | None = None
    max_new_tokens: int = 12
    scheduler: str | None = None  # a Dask scheduler's address (else $DASK_SCHEDULER_ADDRESS)


@dataclasses.dataclass(frozen=True, kw_only=True)
class InfoConfig(Selection):
    """What ``layerfilm info`` needs beyond the selection: the film's timing (to show its
    length) and where the loss comes from."""

    fps: int = 25
    frames_per_keyframe: int | None = None
    metrics: Path | None = None
    projection: str = "pca"
    fourier_ref: int | None = None

    @property
    def keyframe_frames(self) -> int:
        return self.frames_per_keyframe or self.fps


@dataclasses.dataclass(frozen=True, kw_only=True)
class PublishConfig(_Validated):
    """``layerfilm publish``: which films go where on the Hugging Face Hub."""

    films: tuple[Path, ...] = ()
    repo_id: str = ""
    bucket: str | None = None  # USER/NAME[/prefix]: a Storage Bucket instead of a repository
    repo_type: str = "model"
    private: bool = False
    path_in_repo: str = ""
    message: str | None = None
    dry_run: bool = False
