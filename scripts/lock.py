#!/usr/bin/env python3
"""The test lock (``constraints/test.txt``): write it from a virtual environment, or say how an
environment differs from it.

``make test``, ``make demo`` and CI install with ``pip -c constraints/test.txt``, so the golden
frames and every numeric limit in the tests meet the versions they were recorded with.
``make test-latest`` builds ``.venv-latest`` from pyproject.toml's ranges alone (what a fresh
``pip install`` gets today), runs the suite there and prints ``diff``'s report; ``make lock``
writes the lock from that environment.

Usage:
    python scripts/lock.py write VENV  > constraints/test.txt
    python scripts/lock.py diff VENV [constraints/test.txt]
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HEADER = """\
# The exact versions `make test`, `make demo` and CI install (pip -c): the golden frames in
# tests/golden/ were recorded with these (Python 3.11, Linux x86_64).  Users' pip install keeps
# pyproject.toml's ranges.  Refresh with `make lock` (docs/internals.md, "Development" says how).
"""


def installed(venv: Path) -> dict[str, str]:
    """``name -> version`` of every distribution in ``venv`` but the editable layerfilm; a
    local build label (``torch==2.13.0+cpu``) is dropped so the pin matches the build pip
    finds (the Makefile installs the CPU build first)."""
    out = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze", "--exclude-editable"],
                         check=True, capture_output=True, text=True).stdout
    pins = {}
    for line in out.splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.split("+", 1)[0].strip()
    return pins


def locked(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    return pins


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("write", "diff"):
        print(__doc__, file=sys.stderr)
        return 2
    now = installed(Path(argv[1]))
    if argv[0] == "write":
        sys.stdout.write(HEADER + "".join(f"{n}=={v}\n" for n, v in sorted(now.items())))
        return 0
    lock = locked(Path(argv[2] if len(argv) > 2 else "constraints/test.txt"))
    changed = [f"  {n}: {lock[n]} -> {now[n]}" for n in sorted(now.keys() & lock.keys()) if now[n] != lock[n]]
    added = [f"  {n}: {now[n]} (not in the lock)" for n in sorted(now.keys() - lock.keys())]
    gone = [f"  {n}: {lock[n]} (no longer installed)" for n in sorted(lock.keys() - now.keys())]
    lines = changed + added + gone
    print(f"{len(changed)} of {len(lock)} locked packages at another version"
          + (":" if lines else "") + ("\n" + "\n".join(lines) if lines else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
