"""What the training callbacks share: the film's options checked before training starts, the
update command, the one background update at a time (and the one pending behind it), the
final film and its publication.

The training process never renders: after a save it starts ``layerfilm watch RUN OUT --once``
(:func:`update_command`) in a separate process at the lowest CPU priority with one thread per
library, and goes on training.  While that update runs, further saves only mark another one
pending, started by the first cheap look (:meth:`Runner.poll`, a ``waitpid`` without waiting)
after the running one has ended.  A failed update is one logged line; training goes on.  At
the end of training the running update is waited for and the final film made (blocking, at
normal priority), then published when asked.  Nothing here imports a training library.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError, LayerfilmError

LOG = logging.getLogger("layerfilm")
NICE = 19  # the lowest CPU priority: the update gets only what training leaves idle
ONE_THREAD = ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# Render options that make no sense for a film rewritten after every save (watch refuses them
# too) or that the callback sets itself.
NOT_HERE = {"checkpoints": "the run's folder is the trainer's", "output": "give it as output=",
            "frames_dir": "render the frames once training has ended",
            "stills_dir": "render the stills once training has ended",
            "from_manifest": "render it again once training has ended",
            "print_config": "there is no command line to print"}
WATCH_WAITS = "; waiting for the checkpoints to change"  # what watch adds to a failed update


def update_command(run_dir: str | os.PathLike, output: str | os.PathLike,
                   render_args: list[str]) -> list[str]:
    """The command that brings ``output`` up to date with the complete checkpoints in
    ``run_dir``: ``layerfilm watch RUN OUT --once`` with the film's render options.  ``--settle
    0``: the callback starts it once the trainer's save has returned, so a checkpoint is read as
    soon as its format shows it whole (one still being written, by another save, is left for
    the next update); the default settling time would leave the newest one out."""
    return [sys.executable, "-m", "layerfilm", "watch", os.fspath(run_dir), os.fspath(output),
            "--once", "--settle", "0", "-q", *render_args]


def _command(name: str):
    """The click command behind ``layerfilm NAME`` (its options, by parameter name)."""
    import typer.main

    from ..cli import app

    return typer.main.get_command(app).commands[name]


def command_args(name: str, options: Mapping[str, Any], what: str) -> list[str]:
    """``options`` -- the parameters of ``layerfilm NAME`` by their Python names, as
    ``RenderConfig`` and the config file name them (``frames_per_keyframe=2``, ``cache=False``)
    -- as that command's arguments (``--frames-per-keyframe 2 --no-cache``).  ``None`` leaves
    an option at its default; a list repeats an option that may be given more than once."""
    params = {p.name: p for p in _command(name).params if p.param_type_name == "option"}
    args: list[str] = []
    for key, value in options.items():
        param = params.get(key)
        if param is None or key in NOT_HERE:
            raise ConfigError(f"{what}: {key!r} is not an option here ({_why_not(name, key, params)})")
        if value is None:
            continue
        long = max(param.opts, key=len)
        if param.is_flag and isinstance(value, bool):
            off = max(param.secondary_opts, key=len) if param.secondary_opts else None
            if not value and off is None:
                continue  # a flag with no --no- form: off is its default
            args.append(long if value else off)
        elif param.multiple and isinstance(value, (list, tuple)):
            for v in value:
                args += [long, os.fspath(v) if isinstance(v, os.PathLike) else str(v)]
        else:
            args += [long, os.fspath(value) if isinstance(value, os.PathLike) else str(value)]
    return args


def _why_not(name: str, key: str, params) -> str:
    import difflib

    if key in NOT_HERE:
        return NOT_HERE[key]
    close = difflib.get_close_matches(key, [p for p in params if p not in NOT_HERE], 1)
    return (f"did you mean {close[0]!r}?" if close else
            f"the options of layerfilm {name} --help, by their Python names: frames_per_keyframe=2")


def checked_render_args(output: Path, options: Mapping[str, Any]) -> list[str]:
    """``options`` as ``layerfilm render`` arguments, checked by render's own parser and
    checks (with any ``layerfilm.toml`` here, as the update will read it), so that a mistake
    stops the run before it trains, not the film after every save.  Raises
    :class:`ConfigError`.  The output's folder need not exist yet (the trainer may make it):
    it is made before the first film."""
    from ..cli.render import render_config

    args = command_args("render", options, "LayerfilmCallback")
    command = _command("render")
    here = output if output.parent.is_dir() else Path(output.name)
    try:
        ctx = command.make_context("layerfilm watch", [".", os.fspath(here), *args])
    except Exception as e:  # click's usage errors (typer vendors click: match by interface)
        if not hasattr(e, "format_message"):
            raise
        raise ConfigError(f"LayerfilmCallback: {' '.join(e.format_message().split())}") from None
    config, _ = render_config(ctx, ctx.params, "watch")
    config.validated()
    return args


def checked_publish_args(output: Path, publish: str | Mapping[str, Any]) -> list[str]:
    """``publish=`` as ``layerfilm publish`` arguments: ``"USER/NAME"`` (a model repository),
    ``"hf://buckets/USER/NAME[/FOLDER]"`` (a Storage Bucket), or a mapping of publish's
    options by name (``{"repo_id": ..., "repo_type": "dataset", "private": True}``)."""
    from ..config import PublishConfig

    if isinstance(publish, str):
        bucket = publish.lower().startswith("hf://buckets/")
        options = {"bucket": publish[len("hf://buckets/"):]} if bucket else {"repo_id": publish}
    elif isinstance(publish, Mapping):
        options = dict(publish)
    else:
        raise ConfigError(f"publish= takes a repository (USER/NAME), a bucket "
                          f"(hf://buckets/USER/NAME) or a mapping of options, got {publish!r}")
    args = command_args("publish", options, "LayerfilmCallback publish=")
    PublishConfig(films=(output,), **options).validated()
    return args


def has_step_zero(run_dir: str | os.PathLike) -> bool:
    """Whether layerfilm finds a checkpoint of step 0 in ``run_dir`` (in any layout it reads)."""
    from ..checkpoints import discover

    try:
        refs, _ = discover(Path(run_dir), True, few=True)
    except LayerfilmError:
        return False
    return any(r.step == 0 for r in refs)


def last_words(text: str) -> str:
    """The one line that says how a layerfilm command ended: its error, else its last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for prefix in ("layerfilm: error: ", "not updated: "):
        said = [line for line in lines if line.startswith(prefix)]
        if said:  # watch's own wording for a render that failed: the failure is what matters
            return said[-1].removeprefix(prefix).removesuffix(WATCH_WAITS)
    return lines[-1] if lines else "(it said nothing)"


def _low_priority(command: list[str]) -> tuple[list[str], dict]:
    """``command`` run at the lowest CPU priority: through ``nice`` on POSIX systems, in the
    idle priority class on Windows."""
    import shutil

    if os.name == "nt":
        return command, {"creationflags": subprocess.IDLE_PRIORITY_CLASS}
    nice = shutil.which("nice")
    return ([nice, "-n", str(NICE), *command] if nice else command), {}


@dataclasses.dataclass
class Update:
    """One run of the update command: after which save (``None``: the final film), when it
    started (``time.monotonic``), how long it took and how it ended (``None`` while running)."""

    save: int | None
    started: float
    seconds: float | None = None
    returncode: int | None = None
    said: str = ""


class Runner:
    """The film of one training run, kept up to date from the training process's main rank.

    ``saved(run_dir)`` after each save, ``poll()`` as often as is cheap (every step),
    ``finish()`` when training has ended.  ``updates`` records every update run; ``film`` is
    the final film once made, ``error`` the line that says why the final film or its
    publication failed."""

    def __init__(self, output: str | os.PathLike, every: int = 1,
                 publish: str | Mapping[str, Any] | None = None, **render_options: Any):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"LayerfilmCallback: every must be a whole number of saves, at "
                              f"least 1, got {every!r}")
        self.output = Path(os.path.abspath(os.fspath(output)))
        self.every = every
        self.render_args = checked_render_args(self.output, render_options)
        self.publish_args = None if publish is None else checked_publish_args(self.output, publish)
        self.run_dir: Path | None = None
        self.saves = 0
        self.pending = False
        self.updates: list[Update] = []
        self.film: Path | None = None
        self.error: str | None = None
        self._running: tuple[subprocess.Popen, Any] | None = None  # (process, its output file)

    def saved(self, run_dir: str | os.PathLike, now: bool = True) -> None:
        """A checkpoint of ``run_dir`` has been saved: every ``every``-th, an update is due,
        started now, or (``now=False``: the file is still to be written) at the next poll."""
        self.run_dir = Path(os.path.abspath(os.fspath(run_dir)))
        self.saves += 1
        if self.saves % self.every == 0:
            self.pending = True
        if now:
            self.poll()

    def poll(self) -> None:
        """Notice an update that has ended; start the pending one if none is running."""
        if self._running is not None and self._running[0].poll() is not None:
            self._ended()
        if self.pending and self._running is None and self.run_dir is not None:
            self.pending = False
            self.output.parent.mkdir(parents=True, exist_ok=True)
            command, extra = _low_priority(update_command(self.run_dir, self.output, self.render_args))
            env = {**os.environ, **{name: "1" for name in ONE_THREAD}}
            log = tempfile.TemporaryFile()
            try:
                process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                           stderr=subprocess.STDOUT, env=env, **extra)
            except OSError as e:
                log.close()
                LOG.warning("layerfilm: could not start the film's update: %s", e)
                return
            self._running = (process, log)
            self.updates.append(Update(self.saves, time.monotonic()))

    def _ended(self) -> None:
        process, log = self._running
        self._running = None
        update = self.updates[-1]
        update.returncode = process.wait()
        update.seconds = time.monotonic() - update.started
        update.said = _read(log)
        if update.returncode != 0:
            LOG.warning("layerfilm: %s was not brought up to date after save %d: %s",
                        self.output, update.save, update.said)

    def finish(self, run_dir: str | os.PathLike | None = None) -> Path | None:
        """Wait for the running update, make the final film of every complete checkpoint in
        the run (blocking), publish it when asked.  Returns the film, or ``None`` when it could
        not be made (``error`` says why, and so does the log)."""
        if run_dir is not None:
            self.run_dir = Path(os.path.abspath(os.fspath(run_dir)))
        if self._running is not None:
            self._running[0].wait()
            self._ended()
        self.pending = False
        if self.run_dir is None:
            return self._failed("no checkpoint was saved, so there is no film")
        self.output.parent.mkdir(parents=True, exist_ok=True)
        command = update_command(self.run_dir, self.output, self.render_args)
        update = Update(None, time.monotonic())
        self.updates.append(update)
        update.returncode, update.said = _run(command)
        update.seconds = time.monotonic() - update.started
        steps = _steps_filmed(self.output, self.run_dir)
        if update.returncode != 0 or not steps:
            why = (update.said if update.returncode != 0 else
                   f"fewer than two complete checkpoints in {self.run_dir}")
            return self._failed(f"the final film {self.output} was not made: {why} "
                                f"(to try again: {shlex.join(['layerfilm', *command[3:]])})")
        self.film = self.output
        LOG.info("layerfilm: %s: the film of %d checkpoints, steps %s..%s", self.output,
                 len(steps), f"{steps[0]:,}", f"{steps[-1]:,}")
        if self.publish_args is not None:
            code, said = _run([sys.executable, "-m", "layerfilm", "publish", os.fspath(self.output),
                               *self.publish_args])
            if code != 0:
                self._failed(f"{self.output} was not published: {said}")
            else:
                LOG.info("layerfilm: %s", said)
        return self.film

    def _failed(self, message: str) -> None:
        self.error = message
        LOG.error("layerfilm: %s", message)
        return None


def _read(log) -> str:
    try:
        log.seek(0)
        return last_words(log.read().decode(errors="replace"))
    finally:
        log.close()


def _run(command: list[str]) -> tuple[int, str]:
    """Run ``command`` to its end here; its exit status and :func:`last_words`."""
    with tempfile.TemporaryFile() as log:
        code = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=log,
                              stderr=subprocess.STDOUT).returncode
        log.seek(0)
        return code, last_words(log.read().decode(errors="replace"))


def _steps_filmed(output: Path, run_dir: Path) -> list[int]:
    """The steps the film at ``output`` shows, by its manifest, if it is a film of ``run_dir``
    (a film left there by another run does not count)."""
    from ..manifest import load, manifest_path

    try:
        doc = load(manifest_path(output))
        if Path(doc["checkpoints"]["folder"]) != run_dir or not output.is_file():
            return []
        return sorted({int(f["step"]) for f in doc["checkpoints"]["files"]})
    except (LayerfilmError, OSError, KeyError, TypeError, ValueError):
        return []
