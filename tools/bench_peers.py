#!/usr/bin/env python
"""W1 side by side: ours, TRL/HF and Tunix, run alternately in one sitting; prints one JSON line with each
run's figures, the medians, and our ratios (sampler tokens/s: ours / theirs; GRPO step: theirs / ours, so
above 1 means we are faster). Ours runs once per ``--ours-cpu-devices`` value: on one device, and with the
host split into two data-parallel devices (``mesh.cpu_devices: 2``).

The peers run from their own virtual environments (see ``../shared/peers/README.md`` for how to create
them); timings on a shared machine drift, so rounds alternate the three and the medians are compared.

    python tools/bench_peers.py --trl-python ~/peers-env/trl-venv/bin/python \\
        --tunix-python ~/peers-env/tunix-venv/bin/python [--rounds 2] [--peers-dir ../shared/peers]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_one(cmd: list[str], timeout: int = 1800) -> dict:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in p.stdout.splitlines() if ln.strip().startswith("{")]
    if p.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {p.returncode}):\n{p.stderr[-2000:]}")
    return json.loads(lines[-1])


def figures(r: dict) -> dict:
    s, g = r.get("sampler", {}), r.get("grpo", {})
    return {"sampler_tokens_per_s": s.get("tokens_per_s"), "sampler_warmup_s": s.get("warmup_s"),
            "grpo_s_per_step": g.get("s_per_step"), "grpo_warmup_step_s": g.get("warmup_step_s"),
            "grpo_gen_s_per_step": g.get("gen_s_per_step"), "loadavg_start": r.get("loadavg_start")}


def median(runs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trl-python", help="python of the TRL venv (skipped if not given)")
    ap.add_argument("--tunix-python", help="python of the Tunix venv (skipped if not given)")
    ap.add_argument("--peers-dir", default=str(ROOT.parent / "shared" / "peers"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads for TRL (1 on a busy machine)")
    ap.add_argument("--ours-cpu-devices", default="0,2",
                    help="comma-separated mesh.cpu_devices values to run ours with (0: one device, as JAX starts; "
                         "N: the host split into N data-parallel devices, reported as reasoning_rl_cpuN)")
    args = ap.parse_args()
    peers = Path(args.peers_dir)
    cmds = {}
    for n in (int(x) for x in args.ours_cpu_devices.split(",")):
        cmds["reasoning_rl" if n == 0 else f"reasoning_rl_cpu{n}"] = [
            sys.executable, str(ROOT / "tools" / "bench.py"), "--cpu-devices", str(n)]
    if args.trl_python:
        cmds["trl"] = [args.trl_python, str(peers / "trl_w1.py")] + (
            ["--threads", str(args.threads)] if args.threads else [])
    if args.tunix_python:
        cmds["tunix"] = [args.tunix_python, str(peers / "tunix_w1.py")]
    runs: dict[str, list[dict]] = {k: [] for k in cmds}
    for rnd in range(args.rounds):
        for name, cmd in cmds.items():
            print(f"[round {rnd + 1}/{args.rounds}] {name} ...", file=sys.stderr, flush=True)
            runs[name].append(figures(run_one(cmd)))
            print(f"  {runs[name][-1]}", file=sys.stderr, flush=True)
    med = {name: {k: median(rs, k) for k in rs[0]} for name, rs in runs.items()}
    ratios = {}  # ratios[ours variant][peer]
    for mine in (n for n in cmds if n.startswith("reasoning_rl")):
        ours = med[mine]
        ratios[mine] = {}
        for name in (n for n in cmds if not n.startswith("reasoning_rl")):
            m = med[name]
            ratios[mine][name] = {
                "sampler_tokens_per_s_ours_over_theirs": (ours["sampler_tokens_per_s"] / m["sampler_tokens_per_s"]
                                                          if m["sampler_tokens_per_s"] else None),
                "grpo_step_theirs_over_ours": (m["grpo_s_per_step"] / ours["grpo_s_per_step"]
                                               if m["grpo_s_per_step"] else None),
            }
    print(json.dumps({"workload": "W1", "cpu_count": os.cpu_count(), "rounds": args.rounds, "runs": runs,
                      "median": med, "ratios": ratios}))


if __name__ == "__main__":
    main()
