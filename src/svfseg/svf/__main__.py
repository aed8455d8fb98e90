"""``python -m svfseg.svf``: the export command moved to the application, ``svfseg.inference.export``.

The SVF core is a library for any PyTorch model and imports nothing of svfseg's application; exporting a
trained run (checkpoint, run config, merged model) is the application's work. This stub only points an
old command line at the new one and fails (exit 2), so a script that still calls it stops visibly.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence

NEW_COMMAND = "python -m svfseg.inference.export CKPT --out DIR [--force]"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "export":
        args = args[1:]
    shown = shlex.join(args) if args else "CKPT --out DIR [--force]"
    print(
        f"python -m svfseg.svf export has moved: run python -m svfseg.inference.export {shown}\n"
        f"(usage: {NEW_COMMAND}; installed as the svfseg-export command too)",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
