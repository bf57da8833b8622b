"""math-verify worker process: reads JSON requests on stdin, answers one line each on stdout.

Started by ``math.py`` as a plain ``python -P -c`` child that runs this file, never through
``multiprocessing``: a spawned multiprocessing child re-imports the caller's ``__main__``,
so a user's script without an ``if __name__ == "__main__":`` guard would run again inside
each worker (and score wrongly). This file imports nothing of the package.

Protocol: the worker prints ``ready`` once math-verify is imported; then for each request
line ``{"ref": str, "ans": str}`` it prints ``1`` (equivalent), ``0`` (not, or math-verify
raised: unparseable input) - one line per request. EOF on stdin ends it.
"""

import json
import logging
import resource
import signal
import sys

_LIMIT = 4 << 30  # a runaway sympy power must not eat the host


def _cap_memory() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    want = _LIMIT if hard == resource.RLIM_INFINITY else min(_LIMIT, hard)
    if soft == resource.RLIM_INFINITY or soft > want:
        resource.setrlimit(resource.RLIMIT_AS, (want, hard))


def _parse(s: str) -> list:
    from math_verify import parse

    tries = [s] if ("$" in s or "\\boxed" in s) else [f"${s}$", s]
    for t in tries:
        parsed = parse(t, parsing_timeout=None)
        if parsed:
            return parsed
    return []


def _verify(reference: str, answer: str) -> bool:
    from math_verify import verify

    gold, pred = _parse(reference), _parse(answer)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=None))


def main() -> None:
    # Ctrl-C reaches the whole foreground process group: the trainer finishes its step (and needs these
    # workers for it), so the workers leave SIGINT to it; EOF on stdin ends them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _cap_memory()
    logging.disable(logging.CRITICAL)  # math-verify logs parse failures; stdout is our channel
    import math_verify  # noqa: F401 - import once per worker, not per check

    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            ok = _verify(str(req["ref"]), str(req["ans"]))
        except Exception:  # noqa: BLE001 - sympy/latex errors mean "not verified"
            ok = False
        out.write("1\n" if ok else "0\n")
        out.flush()


if __name__ == "__main__":
    main()
