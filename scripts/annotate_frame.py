#!/usr/bin/env python3
"""Make docs/reading_a_film.png: one frame of the sample film with numbered markers on what a
viewer reads in it (the README's "Reading a film" explains each number).

The frame is the real film's frame at the checkpoint of step 2,400 (the embedding's rebel
moment, as validation accuracy jumps), rendered as

    layerfilm render sample_checkpoints film.webm --loss-strip \\
        --caption "4-block GPT (d_model 48) learning a + b mod 97" --captions val_acc.jsonl

with ``val_acc.jsonl`` made here from ``sample_checkpoints/metrics.jsonl`` (the validation
accuracy at each checkpoint).  The markers are placed from the film's own layout.

Usage:  python scripts/annotate_frame.py [--out docs/reading_a_film.png] [--step 2400]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "reading_a_film.png")
    ap.add_argument("--step", type=int, default=2400)
    ap.add_argument("--size", default="1280x720")
    a = ap.parse_args()

    from matplotlib import font_manager
    from PIL import Image, ImageDraw, ImageFont

    from layerfilm import film as films, layouts, overlays, shade
    from layerfilm.text import text_width
    from layerfilm.config import RenderConfig, parse_size
    from layerfilm.plan import make_plan

    ckpts = ROOT / "sample_checkpoints"
    tmp = Path(tempfile.mkdtemp())
    rows = [json.loads(line) for line in (ckpts / "metrics.jsonl").read_text().splitlines()]
    captions = tmp / "val_acc.jsonl"
    captions.write_text("".join(json.dumps({"step": r["step"], "text": f"validation accuracy "
                                            f"{100 * r['val_acc']:.0f} %"}) + "\n"
                                for r in rows if r["step"] % 100 == 0))
    cfg = RenderConfig(checkpoints=ckpts, output=tmp / "film.webm", size=parse_size(a.size),
                       loss_strip=True, captions=captions,
                       caption="4-block GPT (d_model 48) learning a + b mod 97").validated()
    plan = make_plan(cfg)
    keys, drift = layouts.layouts_and_drift(plan, cfg.projection, cfg.seed, use_cache=cfg.cache)
    film = films.prepare(plan, keys, films.FilmSpec.of(cfg), drift)
    k = int(np.flatnonzero(plan.steps == a.step)[0])
    index = films.keyframe_maker(film)(k)
    img = Image.fromarray(shade.palette(cfg.cmap)[index], "RGB")

    lay = film.grid
    r0 = lay.rects[0]
    (strip,) = [o for o in film.overlays if isinstance(o, overlays.LossStrip)]
    step_box = lay.fields["step"]
    pf = lay.panel_font
    mark_left = lay.mark[0][2] - text_width("rebel +3.8", pf) - max(3, round(pf * 0.55)) \
        - max(2, pf // 4)
    marks = [  # (number, x, y): a marker beside what it names
        (1, step_box[0] - 14, lay.header // 2),                               # step and loss
        (2, (r0[0] + r0[2]) // 2 - 60, (r0[1] + r0[3]) // 2 - 50),            # the dots
        (3, r0[0] + 14, (r0[1] + 3 * r0[3]) // 4),                            # border: activity / rebel
        (4, mark_left - 14, (lay.mark[0][1] + lay.mark[0][3]) // 2),          # the mark
        (5, lay.scalebar[1][0] + 10, lay.scalebar[1][1] - 14),                # scale bar
        (6, (lay.spark[1][0] + lay.spark[1][2]) // 2, lay.spark[1][1] - 14),  # activity line
        (7, int(strip.x_of(a.step)) + 16, strip.plot[1] + 10),                 # loss strip cursor
        (8, lay.captions[0][0] + 250, (lay.captions[0][1] + lay.captions[0][3]) // 2),  # captions
        (9, lay.legend[0] - 14, (lay.legend[1] + lay.legend[3]) // 2),         # legend
    ]
    draw = ImageDraw.Draw(img)
    font = ImageFont.truetype(font_manager.findfont("DejaVu Sans:bold"), 15)
    for n, x, y in marks:
        draw.ellipse((x - 11, y - 11, x + 11, y + 11), fill=(63, 208, 255), outline=(0, 0, 0), width=2)
        draw.text((x, y), str(n), fill=(0, 0, 0), font=font, anchor="mm")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    img.save(a.out, optimize=True)
    print(f"wrote {a.out} (step {a.step:,}, {img.width}x{img.height})")


if __name__ == "__main__":
    main()
