"""The wheel carries every subpackage under reasoning_rl (and no top-level `models`/`sharding`)."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contents(tmp_path):
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    (wheel,) = tmp_path.glob("reasoning_rl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert "models" not in tops and "sharding" not in tops
    # every package directory in the source tree must be in the wheel
    src_pkgs = {"reasoning_rl/" + str(p.parent.relative_to(ROOT / "reasoning_rl")) for p in
                (ROOT / "reasoning_rl").rglob("__init__.py")}
    src_pkgs |= {"reasoning_rl/models/" + str(p.parent.relative_to(ROOT / "models")) for p in
                 (ROOT / "models").rglob("__init__.py")}
    src_pkgs |= {"reasoning_rl/sharding/" + str(p.parent.relative_to(ROOT / "sharding")) for p in
                 (ROOT / "sharding").rglob("__init__.py")}
    for pkg in src_pkgs:
        pkg = pkg.replace("/.", "")
        assert f"{pkg}/__init__.py" in names, f"{pkg} missing from the wheel"
    for must in ("reasoning_rl/cli.py", "reasoning_rl/models/transformer.py", "reasoning_rl/sharding/rules.py",
                 "reasoning_rl/rollout/sampler.py", "reasoning_rl/algorithms/steps.py"):
        assert must in names
    ep = [n for n in names if n.endswith("entry_points.txt")]
    assert ep and "reasoning-rl = reasoning_rl.cli:main" in zipfile.ZipFile(wheel).read(ep[0]).decode()
