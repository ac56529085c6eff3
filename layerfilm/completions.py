"""``--prompt``: what each keyframe's checkpoint says.  One model is built once per render
(transformers, from a local ``config.json`` or a nanoGPT checkpoint's ``model_args``); each
keyframe's weights are copied into it in place, and every prompt gets a short greedy
continuation.  The result is plain data: per keyframe, ``(prompt, completion)`` pairs, which
the film shows as that keyframe's caption and the manifest records.

transformers and torch are imported here only, and only when prompts are given (the
``layerfilm[model]`` extra).  Nothing is downloaded: every config and tokenizer is read from
local files (``local_files_only=True``), and weights come through the checkpoints' own readers
(torch pickles with ``weights_only=True`` only).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path, PurePath

from . import checkpoints
from .errors import CheckpointError, ConfigError, first_line
from .plan import Plan
from .progress import QUIET, Progress
from .untrusted import load_json

MODEL_CONFIG = "config.json"
CONFIG_DOC_MAX = 256 * 1024  # a model config the manifest records, when no larger
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
ARROW = "\u2192"  # prompt -> completion, in captions


@dataclasses.dataclass(frozen=True)
class Said:
    """What one keyframe's checkpoint said: ``(prompt, completion)`` for every prompt."""

    step: int
    completions: tuple[tuple[str, str], ...]

    def caption(self) -> str:
        """One line per prompt, ``12 45 = -> 57``, joined by newlines."""
        return "\n".join(f"{p} {ARROW} {c}" for p, c in self.completions)


def captions(said: list[Said], given: list[tuple[int, str]] | None = None) -> list[tuple[int, str]]:
    """The film's per-keyframe captions: each keyframe's completions, one line per prompt; with
    ``--captions`` too (``given``), at every step of either the file's line in force then comes
    first, then the completions in force then."""
    if not given:
        return [(s.step, s.caption()) for s in said]
    steps = sorted({s.step for s in said} | {s for s, _ in given})
    out = []
    for step in steps:
        text = [t for s, t in given if s <= step][-1:] + [s.caption() for s in said if s.step <= step][-1:]
        if text:
            out.append((step, "\n".join(text)))
    return out


def record(said: list[Said], max_new_tokens: int, paths: list[str]) -> dict | None:
    """The manifest's ``completions``: the prompts, the decoding, and per keyframe its
    checkpoint (``paths``, one per keyframe) and step and what it said to each prompt
    (prompt -> completion); ``None`` without prompts."""
    if not said:
        return None
    return {"decoding": "greedy", "max_new_tokens": max_new_tokens,
            "prompts": [p for p, _ in said[0].completions],
            "checkpoints": [{"path": path, "step": s.step, "completions": dict(s.completions)}
                            for path, s in zip(paths, said)]}


def rows(said: list[Said]) -> list[tuple[int, str, str]]:
    """``(step, prompt, completion)`` for every keyframe and prompt, keyframes in order: the
    rows of ``layerfilm stats``' ``completions.csv``."""
    return [(s.step, p, c) for s in said for p, c in s.completions]


def config_doc(plan) -> dict | None:
    """A small ``config.json`` in the checkpoint folder or beside the last checkpoint (the
    manifest records it), or ``None``."""
    storage, last = plan.storage, plan.refs[-1].path
    for candidate in (plan.folder / MODEL_CONFIG, last.parent / MODEL_CONFIG,
                      last / MODEL_CONFIG):
        try:
            if storage.is_file(candidate) and storage.size(candidate) <= CONFIG_DOC_MAX:
                doc = load_json(storage.read(candidate, 0, storage.size(candidate)))
                if isinstance(doc, dict):
                    return doc
        except (OSError, ValueError):
            continue
    return None


def _need_model_extra():
    try:
        import torch
        import transformers
    except ImportError:
        raise ConfigError("--prompt runs the model and needs transformers and torch: "
                          "pip install 'layerfilm[model]' (torch: your own build, as for "
                          "layerfilm[torch])", field="prompt") from None
    return torch, transformers


def _local_dir(storage, path: PurePath) -> Path | None:
    return Path(path) if isinstance(storage, checkpoints.LocalStorage) and Path(path).is_dir() else None


def _candidates(plan: Plan) -> list[Path]:
    """Local folders that may hold the model's config and tokenizer, nearest first: the first
    keyframe's checkpoint folder (a Hugging Face ``checkpoint-N/``), the folder it sits in, its
    parent, and the folder given."""
    ref = plan.refs[0]
    out = []
    for p in (ref.path, ref.path.parent, ref.path.parent.parent, plan.folder):
        d = _local_dir(ref.storage, p)
        if d is not None and d not in out:
            out.append(d)
    return out


def _nanogpt_args(plan: Plan) -> dict | None:
    """The ``model_args`` of a nanoGPT checkpoint dict (the first keyframe's), or ``None``."""
    ref = plan.refs[0]
    local = isinstance(ref.storage, checkpoints.LocalStorage)  # a plan sent to a worker: a copy
    if ref.path.suffix.lower() not in checkpoints.TORCH_SUFFIXES or not local:
        return None
    import torch

    try:
        obj = torch.load(Path(ref.path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None  # the reader names what is wrong with it when the weights are read
    args = obj.get("model_args") if isinstance(obj, dict) else None
    return dict(args) if isinstance(args, dict) else None


def nanogpt_config(args: dict):
    """The ``GPT2Config`` equivalent to a nanoGPT model of these ``model_args`` (nanoGPT's
    ``GPTConfig``: ``n_layer``, ``n_head``, ``n_embd``, ``block_size``, ``vocab_size``,
    ``bias``): exact GELU, 4x MLP, LayerNorm eps 1e-5, tied embeddings; a model trained with
    ``bias=False`` gets zero biases."""
    from transformers import GPT2Config

    try:
        n_embd = int(args["n_embd"])
        return GPT2Config(n_embd=n_embd, n_layer=int(args["n_layer"]), n_head=int(args["n_head"]),
                          n_positions=int(args["block_size"]), vocab_size=int(args["vocab_size"]),
                          n_inner=4 * n_embd, activation_function="gelu", layer_norm_epsilon=1e-5,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
                          bos_token_id=None, eos_token_id=None)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"nanoGPT model_args lack what a GPT-2 config needs ({first_line(e)})") from None


@dataclasses.dataclass
class Runner:
    """One model, built once, whose weights each keyframe replaces; its tokenizer; and how
    checkpoint tensor names map onto its parameters."""

    model: object
    tokenizer: object
    transposed: set  # parameter names whose checkpoint tensors are (out, in): nn.Linear for Conv1D
    conv1d: set  # the model's Conv1D weights (GPT-2 stores them (in, out))
    zero_missing_bias: bool  # nanoGPT bias=False: biases absent from the checkpoint are zeros
    positions: int | None  # the longest sequence the model takes, when its config says

    def load(self, ref, hashed: tuple[str, ...] | None = None, digest: str | None = None
             ) -> dict | None:
        """Copy checkpoint ``ref``'s tensors into the model, tensor by tensor (peak memory: the
        model and one tensor); a parameter the checkpoint lacks is an error, unless it is tied
        to one it has.  ``hashed`` and ``digest``: also read these tensors (a film's drawn
        ones: every tensor), all in file order, hashing their bytes as they are read; returns
        each file's digests (see :func:`~layerfilm.checkpoints.read_whole_hashed`; ``None``
        without, or for formats read whole)."""
        import torch

        src = ref.open()
        params = dict(self.model.named_parameters(remove_duplicate=False))
        wanted = self.reads(src.shapes(), src.where)
        into: dict[str, list[str]] = {}  # checkpoint tensor -> the parameters it fills
        for name, found in wanted.items():
            into.setdefault(found, []).append(name)

        def keep(tensor: str, array) -> None:
            for name in into.pop(tensor, ()):
                value = torch.from_numpy(array)
                if name in self.transposed:
                    value = value.T
                param = params[name]
                if tuple(value.shape) != tuple(param.shape):
                    raise CheckpointError(f"{tensor}: shape {tuple(value.shape)} where the model's "
                                          f"{name} is {tuple(param.shape)} (pass --model-config DIR "
                                          "for this series)", src.where)
                param.copy_(value)

        digests = None
        with torch.no_grad():
            for name in into.pop(None, ()):  # nanoGPT bias=False: zeros
                params[name].zero_()
            if hashed is not None and digest is not None:
                digests = checkpoints.read_whole_hashed(src, hashed, digest, keep)
            for tensor in list(into):  # those not among the hashed ones
                keep(tensor, src.read(tensor))
        return digests

    def reads(self, have: dict[str, tuple[int, ...]], where: str = "") -> dict[str, str | None]:
        """Model parameter name -> the checkpoint tensor (of those in ``have``) copied into it,
        or ``None`` for a nanoGPT ``bias=False`` bias (zeros); a parameter tied to one that is
        read is left out.  :class:`CheckpointError` for a parameter no tensor gives."""
        by_name = _name_map(have)
        tied = _tied(self.model)
        out: dict[str, str | None] = {}
        for name, _ in self.model.named_parameters(remove_duplicate=False):
            found = by_name.get(name)
            if found is not None:
                out[name] = found
            elif tied.get(name) in out or (name in tied and tied[name] in by_name):
                continue
            elif self.zero_missing_bias and name.endswith(".bias"):
                out[name] = None
            else:
                raise CheckpointError(f"no tensor for the model's {name} (the config does not "
                                      "describe these weights: pass --model-config DIR)", where or None)
        return out

    def complete(self, prompt: str, max_new_tokens: int) -> str:
        """The greedy continuation of ``prompt``: at most ``max_new_tokens`` tokens (fewer
        where the model's context ends, or at its end-of-text token), decoded."""
        import torch
        from transformers import GenerationConfig

        try:
            enc = self.tokenizer(prompt, return_tensors="pt")
        except Exception as e:
            raise ConfigError(f"--prompt {prompt!r}: the tokenizer cannot encode it "
                              f"({first_line(e)})", field="prompt") from None
        ids = enc["input_ids"]
        n = max_new_tokens
        if self.positions is not None:
            if ids.shape[1] > self.positions:
                raise ConfigError(f"--prompt {prompt!r}: {ids.shape[1]} tokens, the model takes "
                                  f"at most {self.positions}", field="prompt")
            n = min(n, self.positions - ids.shape[1] + 1)  # the last new token needs no position
        if ids.shape[1] == 0:
            raise ConfigError(f"--prompt {prompt!r}: no tokens", field="prompt")
        cfg = self.model.config
        eos = getattr(cfg, "eos_token_id", None)
        pad = getattr(cfg, "pad_token_id", None)
        pad = pad if pad is not None else (eos if isinstance(eos, int) else 0)
        gen = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=n, eos_token_id=eos,
                               pad_token_id=pad)
        with torch.no_grad():
            out = self.model.generate(ids, attention_mask=enc.get("attention_mask"), generation_config=gen)
        return " ".join(self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).split())


def _name_map(names) -> dict[str, str]:
    """Model parameter name -> checkpoint tensor name: the same name, or with the wrapper
    prefixes of a base model's checkpoint (``h.0...`` for ``transformer.h.0...``)."""
    out = {}
    for n in names:
        out.setdefault(n, n)
        for prefix in ("transformer.", "model."):
            out.setdefault(prefix + n, n)
    return out


def _tied(model) -> dict[str, str]:
    """Parameter name -> the name of the first parameter sharing its storage (tied weights)."""
    first, out = {}, {}
    for name, p in model.named_parameters(remove_duplicate=False):
        key = p.data_ptr()
        if key in first:
            out[name] = first[key]
        else:
            first[key] = name
    return out


def _first_with(dirs: list[Path], names: tuple[str, ...]) -> Path | None:
    return next((d for d in dirs if any((d / n).is_file() for n in names)), None)


def beside(plan: Plan, names: tuple[str, ...]) -> Path | None:
    """The nearest local folder in or beside ``plan``'s checkpoints holding one of ``names``
    (where :func:`open_runner` looks for a config or tokenizer), or ``None``."""
    return _first_with(_candidates(plan), names)


def open_runner(plan: Plan, model_config: Path | None = None, tokenizer: Path | None = None) -> Runner:
    """The model and tokenizer for ``plan``'s checkpoints, built once: the config from
    ``model_config``, else a ``config.json`` in the first checkpoint's folder or beside it, else
    a nanoGPT checkpoint's ``model_args``; the tokenizer from ``tokenizer``, else the first of
    those folders holding one.  :class:`ConfigError` naming what to pass when there is none."""
    torch, transformers = _need_model_extra()
    from transformers.pytorch_utils import Conv1D

    if plan.url and (model_config is None or tokenizer is None):
        raise ConfigError(f"--prompt on remote checkpoints: pass --model-config DIR and --tokenizer DIR "
                          f"(local folders with the model's {MODEL_CONFIG} and its tokenizer; "
                          "nothing but the weights is fetched)", plan.url,
                          field="model_config" if model_config is None else "tokenizer")
    dirs = _candidates(plan)
    nanogpt = None
    config_dir = model_config or _first_with(dirs, (MODEL_CONFIG,))
    if config_dir is None:
        nanogpt = _nanogpt_args(plan)
        if nanogpt is None:
            raise ConfigError(f"--prompt: no {MODEL_CONFIG} in or beside the checkpoints and no "
                              "nanoGPT model_args in them: pass --model-config DIR (a folder with "
                              "the model's config.json)", plan.where, field="model_config")
    if tokenizer is not None and _first_with([Path(tokenizer)], TOKENIZER_FILES) is None:
        raise ConfigError(f"--tokenizer: no tokenizer files in it ({', '.join(TOKENIZER_FILES)})",
                          tokenizer, field="tokenizer")
    tok_dir = tokenizer or _first_with(([config_dir] if config_dir else []) + dirs, TOKENIZER_FILES)
    if tok_dir is None:
        raise ConfigError("--prompt: no tokenizer in or beside the checkpoints: pass --tokenizer "
                          "DIR (a folder with tokenizer.json or the tokenizer's files)", plan.where,
                          field="tokenizer")
    import logging

    quiet = [logging.getLogger(n) for n in ("transformers", "transformers.modeling_utils")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.ERROR)
    try:
        try:
            config = (nanogpt_config(nanogpt) if nanogpt is not None else
                      transformers.AutoConfig.from_pretrained(str(config_dir), local_files_only=True))
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"cannot read the model config: {first_line(e)} (pass --model-config "
                              "DIR)", config_dir, field="model_config") from None
        try:
            tok = transformers.AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"cannot read the tokenizer: {first_line(e)} (pass --tokenizer DIR)",
                              tok_dir, field="tokenizer") from None
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "attention_dropout", "hidden_dropout"):
            if hasattr(config, name):
                setattr(config, name, 0.0)
        try:
            with _default_dtype(torch):
                model = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
        except ValueError as e:
            raise ConfigError(f"transformers cannot build a causal language model from this config: "
                              f"{first_line(e)}", config_dir, field="model_config") from None
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)
    model.eval()
    conv1d = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, Conv1D)}
    transposed = _transposed(plan.refs[0], model, conv1d) if nanogpt is None else conv1d
    positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    return Runner(model, tok, transposed, conv1d, nanogpt is not None and not nanogpt.get("bias", True),
                  positions if isinstance(positions, int) else None)


@contextlib.contextmanager
def _default_dtype(torch):
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _transposed(ref, model, conv1d: set) -> set:
    """The Conv1D weights to transpose: all of them when the checkpoint stores them as
    nn.Linear does, ``(out, in)`` (nanoGPT's names, saved by plain torch), judged on the
    first one that is not square; none when it stores them as GPT-2 does."""
    if not conv1d:
        return set()
    have = ref.open().shapes()
    names = _name_map(have)
    params = dict(model.named_parameters(remove_duplicate=False))
    for name in sorted(conv1d):
        shape = tuple(params[name].shape)
        found = names.get(name)
        if found is None or shape[0] == shape[-1]:
            continue
        return set(conv1d) if tuple(have[found]) == shape[::-1] else set()
    return set()


def fetch_bytes(plan: Plan, runner: Runner) -> int:
    """The bytes :func:`run_prompts` reads from ``plan``'s storage: every tensor the model takes,
    whole, from every keyframe's checkpoint (a torch pickle: the whole file)."""
    total = 0
    for ref in plan.refs:
        src = ref.open()
        itemsize = getattr(src, "itemsize", None)
        if itemsize is None:
            total += sum(plan.storage.size(p) for p in ref.files())
            continue
        shapes = src.shapes()
        total += sum(itemsize(n) * math.prod(shapes[n])
                     for n in runner.reads(shapes, src.where).values() if n is not None)
    return total


def say_fetch(plan: Plan, runner: Runner, progress: Progress, what: str, note: str = "") -> None:
    """For a remote series: say, before it starts, how many bytes running ``what`` fetches
    (whole tensors, not the rows a film draws); ``note`` ends the line's parenthesis."""
    if plan.url:
        progress.warn(f"{what} runs every keyframe's checkpoint whole: fetching "
                      f"{checkpoints.human_bytes(fetch_bytes(plan, runner))} of weights from "
                      f"{plan.url} ({len(plan.refs)} checkpoints{note})")


def manifest_entries(plan: Plan, said: list[Said] | None, max_new_tokens: int, paths: list[str]) -> dict:
    """The manifest's record of what ran the model: ``completions`` (:func:`record`) and
    ``probe`` (``--points activations``: its lines, dots and the key of everything that decides
    its clouds besides the weights -- probe bytes, positions, model config, tokenizer)."""
    probe = getattr(plan, "probe", None)
    return {"completions": record(said or [], max_new_tokens, paths),
            "probe": None if probe is None else {"lines": len(probe.lines), "points": len(probe.points),
                                                 "key": probe.key}}


def check_recorded(doc: dict, path: Path, plan: Plan, prompts: list[str]) -> None:
    """``--from-manifest``: refuse (:class:`ConfigError` naming the file) a probe or prompts
    other than those the manifest ``doc`` (at ``path``) recorded -- a file edited since, or a
    model config or tokenizer changed: the film would not be the same."""
    probe, recorded = getattr(plan, "probe", None), doc.get("probe")
    if probe is not None and recorded and recorded.get("key") != probe.key:
        raise ConfigError(f"changed since {path} was written (the probe, its positions, or the "
                          "model's config or tokenizer): the film would not be the same",
                          probe.path, field="probe")
    said = doc.get("completions")
    if said and said.get("prompts") != prompts:
        raise ConfigError(f"the prompts are not those {path} recorded ({len(prompts)} now, "
                          f"{len(said.get('prompts') or [])} then): the film would not be the same",
                          path, field="prompts")


def run_prompts(plan: Plan, prompts: list[str], max_new_tokens: int, model_config: Path | None = None,
                tokenizer: Path | None = None, progress: Progress = QUIET) -> list[Said]:
    """Every keyframe of ``plan`` run on ``prompts``: one :class:`Said` per keyframe, in order.
    Greedy decoding on the CPU with torch's deterministic algorithms, so a re-render says the
    same."""
    probe = getattr(plan, "probe", None)  # --points activations too: its model, built once
    runner = probe.runner(plan) if probe is not None else open_runner(plan, model_config, tokenizer)
    import torch

    say_fetch(plan, runner, progress, "--prompt")

    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    out = []
    try:
        with progress.stage("Running the prompts", len(plan.refs)) as advance:
            for ref in plan.refs:
                runner.load(ref)
                out.append(Said(ref.step, tuple((p, runner.complete(p, max_new_tokens)) for p in prompts)))
                advance(1)
    finally:
        torch.use_deterministic_algorithms(was)
    return out
