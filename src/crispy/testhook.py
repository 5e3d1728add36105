"""Test-only crash points at the step boundaries of multi-step operations.

Two ways to arm them, both read from crispyd's environment and never set outside tests
(then every call is a no-op):

- CRISPY_TEST_KILL_AT=<step>: crispyd SIGKILLs itself when it first reaches that step
  (tests/test_pod_crash.py).
- CRISPY_TEST_CRASH_FILE=<path>: every step reached is appended to `<path>.trace`, and the
  file itself, re-read at each step, may hold `<generation> <step>#<n>`: crispyd SIGKILLs
  itself at the n-th time it reaches that step after that line was written. The fault
  suite (tests/test_fault_injection.py) learns the steps from the trace, then kills at
  each one in turn without restarting crispyd to arm the next.
"""

from __future__ import annotations

import os
import signal
import threading

KILL_AT = os.environ.get("CRISPY_TEST_KILL_AT", "")
CRASH_FILE = os.environ.get("CRISPY_TEST_CRASH_FILE", "")

_lock = threading.Lock()  # steps are reached from worker threads too (unpacking)
_armed = ""
_seen = 0


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def crash_point(step: str) -> None:
    if KILL_AT and step == KILL_AT:
        _die()
    if CRASH_FILE:
        _from_file(step)


def _from_file(step: str) -> None:
    global _armed, _seen
    with _lock:
        try:
            with open(CRASH_FILE) as f:
                armed = f.read().strip()
        except FileNotFoundError:
            armed = ""
        with open(CRASH_FILE + ".trace", "a") as f:
            f.write(step + "\n")
        if armed != _armed:  # a new arming: count from here
            _armed, _seen = armed, 0
        want, _, n = armed.partition(" ")[2].partition("#")
        if want and step == want:
            _seen += 1
            if _seen == int(n or 1):
                _die()
