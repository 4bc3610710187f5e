"""The entry point every `python -m ...` tool of the project shares."""

from __future__ import annotations

import argparse
import sys
from typing import Callable


def run_tool(main: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """`main(args)`'s exit status; Ctrl-C ends the tool with one line and 130 (the status a
    shell gives a command stopped by SIGINT) instead of a traceback."""
    try:
        return main(args)
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C)", file=sys.stderr)
        return 130
