"""What the Trainer callback costs the training loop: a small real run (a 4-layer GPT-2 of about
220 K parameters, the transformers Trainer on the CPU, checkpoints every 20 steps), trained
with ``LayerfilmCallback`` and without it, in pairs (each run a fresh process, the order within
a pair alternating, so drift in the machine's load falls on both sides alike).  Prints the
loop's wall time (and the training process's CPU time in it) of each run and the ratio
with/without per pair; asserts nothing.

    python bench/callback_overhead.py                  # 3 pairs of 200 steps
    python bench/callback_overhead.py --pairs 5 --steps 400 --film-size 640x360

"The loop" runs from ``on_train_begin`` to ``on_train_end`` (a timing callback placed before
``LayerfilmCallback``): it holds the callback's step-0 save and every update started in the
background, not the final film, which is made after training and reported apart.  The time the
loop spends inside the callback's own hooks is added up too: what the callback costs the
training thread directly, apart from the CPU the updates take from training.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_run(with_callback: bool, out: Path, steps: int, save_steps: int, film_size: str,
            threads: int | None) -> dict:
    """Train once; the loop's wall time and, with the callback, its updates and final film."""
    import torch
    import transformers

    if threads:
        torch.set_num_threads(threads)

    class Clock(transformers.TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.begin, self.cpu = time.perf_counter(), time.process_time()

        def on_train_end(self, args, state, control, **kw):
            self.end, self.cpu = time.perf_counter(), time.process_time() - self.cpu

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=4, n_embd=64, n_head=4, vocab_size=256, n_positions=64,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg)
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": x, "labels": x} for x in torch.randint(0, 256, (2048, 64), generator=g)]
    args = transformers.TrainingArguments(
        str(out / "run"), max_steps=steps, save_steps=save_steps, per_device_train_batch_size=32,
        logging_steps=10, learning_rate=1e-3, report_to=[], use_cpu=True, disable_tqdm=True,
        save_only_model=True, seed=0)
    clock = Clock()
    callbacks = [clock]
    if with_callback:
        from layerfilm.integrations.transformers import LayerfilmCallback

        class Timed(LayerfilmCallback):
            """The callback, with the time the training loop spends in its hooks added up."""

            in_hooks = 0.0

            def _timed(self, hook, *a, **kw):
                t = time.perf_counter()
                try:
                    return getattr(super(), hook)(*a, **kw)
                finally:
                    self.in_hooks += time.perf_counter() - t

            def on_train_begin(self, *a, **kw):
                return self._timed("on_train_begin", *a, **kw)

            def on_save(self, *a, **kw):
                return self._timed("on_save", *a, **kw)

            def on_step_end(self, *a, **kw):
                return self._timed("on_step_end", *a, **kw)

        film = Timed(out / "film.webm", size=film_size)
        callbacks.append(film)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)
    t = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t
    done = {"loop_s": clock.end - clock.begin, "loop_cpu_s": clock.cpu, "train_call_s": total,
            "params": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads()}
    if with_callback:
        ups = film.runner.updates
        done.update(final_s=ups[-1].seconds, updates=len(ups) - 1, hooks_s=film.in_hooks,
                    update_s=[round(u.seconds, 1) for u in ups[:-1]],
                    failed=[u.said for u in ups if u.returncode != 0], film=str(film.runner.film))
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--save-steps", type=int, default=20)
    ap.add_argument("--film-size", default="1280x720", help="the film's --size (default: render's)")
    ap.add_argument("--threads", type=int, help="torch's threads in training (default: torch's own)")
    ap.add_argument("--one", choices=["with", "without"], help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one_run(a.one == "with", a.out, a.steps, a.save_steps, a.film_size, a.threads)))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="lf-cb-bench-") as tmp:
        os.environ.setdefault("LAYERFILM_CACHE_DIR", str(Path(tmp) / "cache"))
        for pair in range(a.pairs):
            got = {}
            for kind in (("without", "with") if pair % 2 == 0 else ("with", "without")):
                out = Path(tmp) / f"{pair}-{kind}"
                done = subprocess.run(
                    [sys.executable, __file__, "--one", kind, "--out", str(out), "--steps", str(a.steps),
                     "--save-steps", str(a.save_steps), "--film-size", a.film_size,
                     *(["--threads", str(a.threads)] if a.threads else [])],
                    capture_output=True, text=True, check=True)
                got[kind] = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(got)
            w, wo = got["with"], got["without"]
            print(f"pair {pair + 1}: without {wo['loop_s']:6.2f} s   with {w['loop_s']:6.2f} s   "
                  f"with/without {w['loop_s'] / wo['loop_s']:.3f}   (CPU {wo['loop_cpu_s']:.2f} s, "
                  f"{w['loop_cpu_s']:.2f} s: {w['loop_cpu_s'] / wo['loop_cpu_s']:.3f}; final film {w['final_s']:.1f} s "
                  f"after training; {w['updates']} updates in training, {w['update_s']} s"
                  f"{'; FAILED: ' + str(w['failed']) if w['failed'] else ''})", flush=True)
    ratios = [r["with"]["loop_s"] / r["without"]["loop_s"] for r in rows]
    cpu = [r["with"]["loop_cpu_s"] / r["without"]["loop_cpu_s"] for r in rows]
    print(f"\n{rows[0]['without']['params']:,} parameters, {a.steps} steps, a checkpoint every "
          f"{a.save_steps}, film {a.film_size}, torch on {rows[0]['without']['threads']} threads, "
          f"{os.cpu_count()} CPUs")
    print(f"loop with/without: median {statistics.median(ratios):.3f}, mean "
          f"{statistics.mean(ratios):.3f}, range {min(ratios):.3f}..{max(ratios):.3f} "
          f"(the issue's bound: 1.05)")
    print(f"the training process's CPU time in the loop, with/without: median {statistics.median(cpu):.3f}")
    hooks = [r["with"]["hooks_s"] / r["without"]["loop_s"] for r in rows]
    print(f"the loop's time in the callback's hooks (the step-0 save, starting updates, the looks at "
          f"every step), over the loop without it: median {statistics.median(hooks):.4f}")


if __name__ == "__main__":
    main()
