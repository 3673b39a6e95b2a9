"""Live progress in the terminal; plain lines everywhere else.

On a terminal, the iteration line is redrawn in place (stage, per-stage sampled
accuracy, env steps, steps/s, time left in the budget), and events such as
evaluations and promotions print as lines of their own above it. When stdout is not
a terminal (CI, ``ray job logs``, a file, Tune's log capture) every iteration is a
plain line, as before: greppable, and nothing a log viewer has to interpret.
"""

from __future__ import annotations

import shutil
import sys


class ProgressDisplay:
    def __init__(self, stream=None, live: bool | None = None):
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self._pending = False  # a redrawable line is on screen

    def iteration(self, line: str) -> None:
        if not self.live:
            print(line, file=self.stream, flush=True)
            return
        width = shutil.get_terminal_size((120, 20)).columns
        self.stream.write("\r\x1b[2K" + line[: max(20, width - 1)])
        self.stream.flush()
        self._pending = True

    def event(self, line: str) -> None:
        if self._pending:  # keep the iteration the event belongs to
            self.stream.write("\n")
            self._pending = False
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self._pending:
            self.stream.write("\n")
            self.stream.flush()
            self._pending = False
