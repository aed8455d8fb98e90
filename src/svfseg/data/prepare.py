"""``python -m svfseg.data.prepare`` moved to ``python -m svfseg.dataprep.prepare``: this stub says so and exits 2."""

from __future__ import annotations

import sys

from svfseg.data.moved_tools import point_to_new_command

if __name__ == "__main__":
    sys.exit(point_to_new_command("prepare"))
