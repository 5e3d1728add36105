"""Test-only crash points: with CRISPY_TEST_KILL_AT=<step> in its environment, crispyd
SIGKILLs itself when it reaches that step (tests/test_pod_crash.py). Read once at start;
never set outside tests, and then every call is a no-op."""

from __future__ import annotations

import os
import signal

KILL_AT = os.environ.get("CRISPY_TEST_KILL_AT", "")


def crash_point(step: str) -> None:
    if KILL_AT and step == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)
