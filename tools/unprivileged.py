"""Run Python code as an unprivileged user from a root session (tests and benchmarks of the sandbox).

Most users are not root, so the code sandbox is tested and benchmarked as one too: from root
(CI, a container) this drops to ``nobody`` with ``setpriv``. That user must be able to read
the interpreter, the package and its few dependencies, which a checkout or virtualenv under
``/root`` is not: ``stage`` copies them, owned by that user, into a world-readable folder.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

NOBODY = 65534
REPO = Path(__file__).resolve().parents[1]


def _setpriv() -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def why_not() -> str | None:
    """None when ``stage`` / ``run`` can work here, else the reason (for a skip)."""
    if os.geteuid() != 0:
        return "not root: already unprivileged"
    if not shutil.which("setpriv"):
        return "setpriv (util-linux) is not installed"
    if interpreter() is None:
        return (f"no Python {sys.version_info[0]}.{sys.version_info[1]} readable by an unprivileged user "
                f"(install python3 from the system packages)")
    return None


def interpreter() -> str | None:
    """An interpreter of this Python's version that ``nobody`` can run (this one, else the system's)."""
    minor = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for exe in (os.path.realpath(sys.executable), f"/usr/bin/python{minor}", f"/usr/local/bin/python{minor}"):
        if not os.path.exists(exe) or not _world_readable(exe):
            continue
        probe = subprocess.run([*_setpriv(), exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
        if probe.returncode == 0 and probe.stdout.strip() == minor:
            return exe
    return None


def _world_readable(path: str) -> bool:
    """Every folder above ``path`` traversable and the file readable by any user (bubblewrap, run by
    that user, binds the interpreter's install by path, which needs exactly this)."""
    if not os.stat(path).st_mode & 0o004:
        return False
    d = os.path.dirname(path)
    while d not in ("/", ""):
        if not os.stat(d).st_mode & 0o001:
            return False
        d = os.path.dirname(d)
    return True


def stage(dst: Path, modules: tuple[str, ...] = ("numpy",), files: tuple[str, ...] = ()) -> dict[str, str]:
    """Copy ``reasoning_rl/`` (and ``files`` of the repo), plus the site-packages of ``modules``, into
    ``dst``, owned by ``nobody``; returns the environment that imports them from there."""
    dst = Path(dst)
    src, site, home = dst / "src", dst / "site", dst / "home"
    for d in (src, site, home):
        d.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "reasoning_rl", src / "reasoning_rl", ignore=ignore, dirs_exist_ok=True)
    for f in files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, src / f)
    for name in modules:
        mod = importlib.import_module(name)
        path = Path(mod.__file__)
        if path.name == "__init__.py":
            shutil.copytree(path.parent, site / path.parent.name, ignore=ignore, dirs_exist_ok=True)
            libs = path.parent.parent / f"{path.parent.name}.libs"  # vendored shared libraries (numpy)
            if libs.is_dir():
                shutil.copytree(libs, site / libs.name, dirs_exist_ok=True)
        else:
            shutil.copy2(path, site / path.name)
    for d in [dst, *dst.rglob("*")]:
        os.chown(d, NOBODY, NOBODY, follow_symlinks=False)
    for d in [dst, *dst.parents]:  # traversable from / down
        if d == Path("/"):
            break
        os.chmod(d, os.stat(d).st_mode | 0o711)
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8",
            "PYTHONPATH": f"{site}{os.pathsep}{src}", "PYTHONDONTWRITEBYTECODE": "1"}


def run(argv: list[str], env: dict[str, str], **kw) -> subprocess.CompletedProcess:
    """``argv`` (``argv[0]`` ``python`` means the staged interpreter) as ``nobody``."""
    if argv and argv[0] == "python":
        argv = [interpreter(), *argv[1:]]
    return subprocess.run([*_setpriv(), *argv], env=env, capture_output=True, text=True, **kw)
