"""The wheel a user installs (``pip install layerfilm``, not the editable install the tests run
on) holds every subpackage, and the command runs from the wheel alone."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_every_package_and_runs(tmp_path):
    # Built from a copy of the files git tracks: a build/ folder left in the checkout would
    # hand pip the files of an earlier build.
    src = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                             capture_output=True).stdout.decode().split("\0")
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    for name in ("pyproject.toml", "README.md"):  # as they are now, committed or not
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "layerfilm", src / "layerfilm", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "--wheel-dir", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True, timeout=300)
    wheel, = (tmp_path / "dist").glob("layerfilm-*.whl")
    packages = {p.parent.relative_to(ROOT).as_posix()
                for p in (ROOT / "layerfilm").rglob("__init__.py")}
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        z.extractall(tmp_path / "site")
    assert len(packages) > 5
    for package in sorted(packages):
        assert f"{package}/__init__.py" in names, f"{package} is not in the wheel"
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "layerfilm").rglob("*.py")}
    assert sources <= names, sorted(sources - names)
    # The command, run from the unpacked wheel only (not this checkout): --help imports every
    # command's module.
    run = subprocess.run([sys.executable, "-m", "layerfilm", "--help"], cwd=tmp_path,
                         env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin",
                              "NUMBA_CACHE_DIR": str(tmp_path / "numba")},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "render" in run.stdout
    check = subprocess.run([sys.executable, "-c", "import layerfilm, layerfilm.encode.chunks, "
                            "layerfilm.cli.render; print(layerfilm.__file__)"], cwd=tmp_path,
                           env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin",
                                "NUMBA_CACHE_DIR": str(tmp_path / "numba")},
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith(str(tmp_path / "site")), check.stdout
