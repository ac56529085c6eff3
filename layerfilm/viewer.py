"""The viewer page: one self-contained HTML file drawn from the film's own keyframe layouts.

:func:`page_data` takes a prepared :class:`~layerfilm.film.Film` (its keyframe layouts, frame
times, grid and colour span) and what the film measured (:class:`~layerfilm.drift.Drift`: rates,
settling steps, rebel scores; each panel's captured variance) and makes the plain data the page
draws from; :func:`page_html` puts it, and the page's script (``_viewer_page.SCRIPT``: the film's
Hermite interpolation, its panel transform and its splatting and log colour scale, ported to
JavaScript), into one HTML file with nothing fetched from anywhere.

Positions travel as uint16 per coordinate, each panel's keyframes quantized over the panel's
own range ``[-a, a]`` (65535 marks a dot that was not finite), base64: 4 bytes per keyframe x
dot before base64, 16/3 after.  A page whose positions would pass :data:`MAX_POSITION_BYTES`
keeps an even subsample of the keyframes (first and last always) and says so.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import numpy as np

from . import atomic, extract, shade
from ._draw_kernels import CUTOFF
from .drift import Drift, Settling
from .film import Film
from .plan import Plan

FORMAT = 1
QMAX = 65534  # quantized coordinates 0..QMAX; QMAX + 1 marks a dot that was not finite
NONFINITE = 65535
# Base64 bytes of positions a page may carry: 128 panels x 1,000 dots x 180 keyframes would be
# 123 MB; at this bound such a page keeps 65 keyframes and stays under 50 MB in all.
MAX_POSITION_BYTES = 45_000_000
BYTES_PER_KEYFRAME_DOT = 2 * 2 * 4 / 3  # two uint16 coordinates, base64


def kept_keyframes(n_keyframes: int, n_dots: int, budget: int = MAX_POSITION_BYTES) -> np.ndarray:
    """(k,) int64 the keyframes a page keeps: all when their positions fit in ``budget``
    bytes, else an even subsample with the first and last."""
    fit = int(budget // max(1.0, n_dots * BYTES_PER_KEYFRAME_DOT))
    if fit >= n_keyframes:
        return np.arange(n_keyframes, dtype=np.int64)
    return np.unique(np.round(np.linspace(0, n_keyframes - 1, max(2, fit))).astype(np.int64))


def quantize(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One panel's keyframes ``P`` (k, n, 2) float32 -> ``(q, a)``: (k, n, 2) uint16 over
    ``[-a, a]`` per axis (``a``: (2,) float64, the farthest finite coordinate; 1 when none is),
    :data:`NONFINITE` where a dot is not finite.  Decoded as ``(q / QMAX * 2 - 1) * a``."""
    P = np.asarray(P, dtype=np.float64)
    ok = np.isfinite(P).all(axis=-1, keepdims=True)
    a = np.nanmax(np.where(ok, np.abs(P), 0.0).reshape(-1, 2), axis=0) if P.size else np.ones(2)
    a = np.where(a > 0, a, 1.0)
    q = np.round((np.where(ok, P, 0.0) / a + 1.0) / 2.0 * QMAX)
    return np.where(ok, np.clip(q, 0, QMAX), NONFINITE).astype("<u2"), a


def dequantize(q: np.ndarray, a: np.ndarray) -> np.ndarray:
    """The page's positions from :func:`quantize`'s ``(q, a)``: float32, NaN where not finite
    (what the page's script computes)."""
    x = ((q.astype(np.float64) / QMAX) * 2.0 - 1.0) * np.asarray(a, dtype=np.float64)
    return np.where((q == NONFINITE).any(axis=-1, keepdims=True), np.nan, x).astype(np.float32)


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def _num(v, digits: int = 4):
    """A float for JSON: ``None`` when not finite, else rounded to ``digits`` significant."""
    v = float(v)
    return None if not math.isfinite(v) else float(f"{v:.{digits}g}")


def _rebel_intervals(steps: np.ndarray, rebel: np.ndarray, z: float) -> list[list]:
    """``[[from_step, to_step, z], ...]``: the runs of keyframe intervals where ``|rebel| >= z``
    (interval k runs from ``steps[k-1]`` to ``steps[k]``; ``z``: the largest score, signed)."""
    hot = np.abs(np.nan_to_num(rebel, nan=0.0)) >= z
    hot[0] = False
    out, k = [], 1
    while k < len(hot):
        if hot[k]:
            j = k
            while j + 1 < len(hot) and hot[j + 1]:
                j += 1
            seg = rebel[k:j + 1]
            out.append([int(steps[k - 1]), int(steps[j]), _num(seg[np.nanargmax(np.abs(seg))], 3)])
            k = j + 1
        else:
            k += 1
    return out


def _tokenizer_texts(plan: Plan, n: int) -> list[str] | None:
    """The token text of each of the embedding's first ``n`` rows, from a ``tokenizer.json``
    beside the checkpoints (read with ``tokenizers`` when installed), else ``None``."""
    from . import completions

    try:
        found = completions.beside(plan, ("tokenizer.json",))
    except Exception:  # a remote series, or nothing local: no token texts
        return None
    if found is None:
        return None
    try:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(found / "tokenizer.json"))
        return [tok.decode([i]) for i in range(n)]
    except Exception:
        return None


def _identities(plan: Plan) -> list[dict]:
    """What each panel's dots are, compactly: ``{"kind": "tokens", "texts": [...]}`` (probe
    tokens, or embedding rows with a tokenizer), ``{"kind": "embed", "ids": b64}`` (token ids),
    or ``{"kind": "weights", "sources": [[tensor, "row" | "column", count], ...], "ids": b64}``
    (the index of each dot in its tensor, int32)."""
    out = []
    probe = plan.probe
    for layer in plan.layers:
        if probe is not None:
            lines = [f"line {probe.numbers[int(li)]}, token {int(p)}" for li, p in probe.points]
            out.append({"kind": "tokens", "texts": list(probe.texts), "where": lines})
            continue
        ids = np.concatenate([s.index for s in layer.sources]).astype("<i4") if layer.sources else \
            np.zeros(0, "<i4")
        if extract.is_token_embedding(layer):
            texts = _tokenizer_texts(plan, int(ids.max()) + 1) if len(ids) else None
            out.append({"kind": "embed", "ids": _b64(ids),
                        **({"texts": [texts[i] for i in ids]} if texts is not None else {})})
            continue
        out.append({"kind": "weights", "ids": _b64(ids),
                    "sources": [[s.tensor, "row" if s.axis == 0 else "column", len(s.index)]
                                for s in layer.sources]})
    return out


def page_data(film: Film, plan: Plan, measured: Drift | None, settling: Settling, rebel_z: float,
              panels: tuple[dict, ...], fields: dict, captions: list[tuple[int, str]],
              caption: str | None, title: str, cmap: str, fps: int,
              budget: int = MAX_POSITION_BYTES) -> dict:
    """Everything the page draws, as JSON-ready data (see the module docstring): the film's
    frame size, timeline (the kept keyframes' frame times and steps), each panel's rect,
    transform, dot size, quantized keyframe positions and numbers, the header's text at every
    frame, the captions and the palette."""
    K, N = film.P.shape[:2]
    kept = kept_keyframes(K, N, budget)
    rz = film.rasterizer()
    frames = np.arange(film.n_frames, dtype=np.float64)
    step_of = np.round(np.interp(frames, film.times, film.steps)).astype(np.int64)
    header = {name: [fn(float(s)) or "" for s in step_of] for name, fn in fields.items()}
    settle = measured.settle_steps(settling) if measured is not None else None
    out_panels = []
    for l, label in enumerate(film.labels):
        a, b = int(film.starts[l]), int(film.starts[l + 1])
        q, amp = quantize(film.P[kept, a:b])
        info = panels[l] if l < len(panels) else {}
        panel = {"label": label, "n": b - a, "rect": [int(v) for v in film.grid.rects[l]],
                 "xform": [float(v) for v in rz.xform[l]], "sigma": float(rz.sigma[l]),
                 "a": [float(v) for v in amp], "q": _b64(q),
                 "share": [_num(info.get("share_min"), 3), _num(info.get("share_max"), 3)]
                 if info.get("share_min") is not None else None}
        if measured is not None:
            panel["settle"] = None if not np.isfinite(settle[l]) else int(settle[l])
            panel["rate"] = [_num(v) for v in measured.rate[l]]
            panel["rebel"] = _rebel_intervals(measured.steps, measured.rebel[l], rebel_z)
        out_panels.append(panel)
    return {
        "layerfilm_page": FORMAT, "title": title, "size": list(film.size), "fps": fps,
        "n_frames": int(film.n_frames), "keyframes": int(K), "kept": [int(k) for k in kept],
        "times": [float(film.times[k]) for k in kept], "steps": [int(film.steps[k]) for k in kept],
        "all_steps": [int(s) for s in film.steps], "frame_steps": [int(s) for s in step_of],
        "header": header, "captions": [[int(s), t] for s, t in captions], "caption": caption or "",
        "span": float(film.shader.span), "log": film.shader.scale == "log",
        "floor": float(shade.FLOOR), "cutoff": float(CUTOFF),
        "palette": _b64(shade.palette(cmap)[shade.DENSITY_BASE:shade.DENSITY_BASE + shade.DENSITY_LEVELS]),
        "rebel_z": rebel_z, "panels": out_panels, "identities": _identities(plan),
    }


def page_html(data: dict) -> str:
    """The self-contained page: ``data`` as inline JSON and the page's script; nothing external."""
    from ._viewer_page import SCRIPT, STYLE

    blob = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    title = html.escape(f"{data['title']} - layerfilm viewer")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title>"
            f"<style>{STYLE}</style></head><body>\n"
            f"<script id=\"lf-data\" type=\"application/json\">{blob}</script>\n"
            f"<script>{SCRIPT}</script>\n</body></html>\n")


def write(path: str | Path, data: dict) -> int:
    """Write the page for ``data`` to ``path`` (atomically); its size in bytes."""
    text = page_html(data).encode("utf-8")
    atomic.write_bytes(path, text)
    return len(text)


def read_data(path: str | Path) -> dict:
    """The data inside a page :func:`page_html` wrote (for tests and tools)."""
    text = Path(path).read_text(encoding="utf-8")
    start = text.index('<script id="lf-data" type="application/json">') + len(
        '<script id="lf-data" type="application/json">')
    return json.loads(text[start:text.index("</script>", start)].replace("<\\/", "</"))


def of_film(picture: Film, plan: Plan, keys_panels: tuple[dict, ...], measured: Drift | None,
            config, captions: list[tuple[int, str]] | None) -> dict:
    """:func:`page_data` for the film ``config`` (a validated ``RenderConfig``) describes,
    prepared as ``picture``: its header fields, captions (``captions``: what ``--prompt`` made,
    else the ``--captions`` file's), title, colormap and the drift's settling rule."""
    from . import header

    fields, _ = header.header_fields(plan, config.tokens_per_step)
    if captions is None:
        captions = header.load_captions(config.captions) if config.captions is not None else []
    return page_data(picture, plan, measured, Settling.of(config), config.rebel_z, keys_panels,
                     fields, captions, config.caption, config.title or plan.name, config.cmap,
                     config.fps)


def recorded_captions(doc: dict, given_file=None) -> list[tuple[int, str]] | None:
    """The captions a film made with ``--prompt`` showed, from its manifest ``doc``'s
    ``completions`` (and the ``--captions`` file ``given_file``, merged as the film did);
    ``None`` when the film ran no prompts."""
    from .completions import Said, captions
    from .header import load_captions

    done = doc.get("completions") if isinstance(doc, dict) else None
    if not isinstance(done, dict) or not isinstance(done.get("checkpoints"), list):
        return None
    said = [Said(int(c["step"]), tuple((str(p), str(t)) for p, t in c["completions"].items()))
            for c in done["checkpoints"]]
    return captions(said, load_captions(given_file) if given_file is not None else None)
