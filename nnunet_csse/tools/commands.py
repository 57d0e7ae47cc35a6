"""Running console scripts (nnU-Net's, ``nnunet-csse``) as steps of the tools and the benchmarks.

:func:`executable` finds a console script of this environment; :func:`run_logged` runs a command with its output
appended to a log file and raises :class:`CommandFailed` (a :class:`~nnunet_csse.tools.StepFailed`) with the tail of
that output when it fails.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from nnunet_csse.tools import StepFailed

TAIL_LINES = 25


class CommandFailed(StepFailed):
    """A command exited with a non-zero status; ``returncode`` and the ``tail`` of its output are kept."""

    def __init__(self, message: str, returncode: int, tail: str) -> None:
        super().__init__(message)
        self.returncode, self.tail = returncode, tail


def executable(name: str) -> str:
    """The console script ``name`` next to ``sys.executable`` (this environment's), else the one on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise StepFailed(f"{name} not found next to {sys.executable} or on PATH: install nnunet-csse (which brings "
                         f"nnunetv2) in this environment")
    return found


def run_logged(cmd: Sequence[str], env: Mapping[str, str], log: Path,
               on_line: Callable[[str], None] | None = None) -> None:
    """Run ``cmd`` (its first element resolved by :func:`executable`) with ``env``, appending the command line and
    its output to ``log`` and passing each output line to ``on_line``; :class:`CommandFailed` when it fails."""
    cmd = [executable(cmd[0]), *cmd[1:]]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as handle, subprocess.Popen(cmd, env=dict(env), stdout=subprocess.PIPE,
                                                    stderr=subprocess.STDOUT, text=True) as proc:
        handle.write(f"$ {' '.join(cmd)}\n")
        lines: deque[str] = deque(maxlen=TAIL_LINES)
        for line in proc.stdout:
            handle.write(line)
            lines.append(line.rstrip("\n"))
            if on_line is not None:
                on_line(line)
        proc.wait()
    if proc.returncode != 0:
        tail = "\n".join("    " + line for line in lines)
        raise CommandFailed(f"{Path(cmd[0]).name} failed with exit code {proc.returncode} (log: {log}); its last "
                            f"lines:\n{tail}", proc.returncode, tail)
