"""crispy-shim: the per-pod supervisor. Reserved here; the pod sandbox issue builds it.

Standard library only, and nothing from crispyd: it must start fast and stay small.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--version"]:
        print("crispy-shim (reserved)")
        return 0
    print(
        "crispy-shim: the per-pod shim is started by crispyd, not by hand, and is not built yet",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
