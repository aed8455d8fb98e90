"""Old command lines of the offline dataset tools, which moved from ``svfseg.data`` to ``svfseg.dataprep``.

``python -m svfseg.data.prepare`` and ``python -m svfseg.data.synthetic`` were the commands before the
runtime data package and the offline tools were split. The stubs beside this module print the new command
with the same arguments and exit 2, so a script that still calls the old one stops visibly instead of
failing with an import error that does not say where the tool went.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence


def point_to_new_command(tool: str, argv: Sequence[str] | None = None) -> int:
    """Print where ``svfseg.data.<tool>`` went (same arguments) on stderr; the exit status is 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    print(
        f"python -m svfseg.data.{tool} has moved: run python -m svfseg.dataprep.{tool} {shlex.join(args)}".rstrip(),
        file=sys.stderr,
    )
    return 2
