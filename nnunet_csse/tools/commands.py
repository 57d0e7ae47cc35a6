"""Running console scripts (nnU-Net's, ``nnunet-csse``) as logged steps of the tools, the benchmarks and the tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
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
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        raise StepFailed(f"{name} not found next to {sys.executable} or on PATH: install nnunet-csse (which brings "
                         f"nnunetv2) in this environment")
    return found


def run_logged(cmd: Sequence[str], env: Mapping[str, str], log: Path, on_line: Callable[[str], None] | None = None,
               timeout: float | None = None) -> str:
    """Run ``cmd`` (its first element resolved by :func:`executable`) with ``env``, appending the command line and
    its output to ``log`` and passing each output line to ``on_line``. Returns the output (stderr included);
    :class:`CommandFailed` when it fails or is killed after ``timeout`` seconds."""
    cmd = [executable(cmd[0]), *cmd[1:]]
    log.parent.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    with open(log, "a") as handle, subprocess.Popen(cmd, env=dict(env), stdout=subprocess.PIPE,
                                                    stderr=subprocess.STDOUT, text=True) as proc:
        handle.write(f"$ {' '.join(cmd)}\n")
        killer = threading.Timer(timeout or threading.TIMEOUT_MAX, proc.kill)
        killer.start()
        try:
            for line in proc.stdout:
                handle.write(line)
                lines.append(line)
                if on_line is not None:
                    on_line(line)
        finally:
            killer.cancel()
        proc.wait()
    if proc.returncode != 0:
        tail = "\n".join("    " + line.rstrip("\n") for line in lines[-TAIL_LINES:])
        raise CommandFailed(f"{Path(cmd[0]).name} failed with exit code {proc.returncode} (log: {log}); its last "
                            f"lines:\n{tail}", proc.returncode, tail)
    return "".join(lines)
