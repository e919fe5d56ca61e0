"""The sandbox: the only place user-supplied code and commands run.

Code tools, code guardrails and the computer tool all come here. Nothing
user-supplied is ever `exec`ed in a service process (DESIGN.md section 4); it runs
in a separate process under bubblewrap:

- namespaces: its own user, pid, ipc, uts, network (nothing but its own empty
  loopback, so no network) and, where the kernel allows, cgroup namespace; no
  nested user namespaces; a new session (no terminal to inject into); it dies
  with its parent.
- filesystem: an allowlist, never `/`: /usr (and the /bin, /lib... links into it),
  /etc/alternatives and /etc/ld.so.cache read-only, a fresh /proc for its own pid
  namespace, a minimal /dev, a small tmpfs /tmp, and the workspace at /workspace.
  Nothing of /work, /root, /home, the rest of /etc, /var or the service's data
  directory exists inside; the service's site-packages, when under /usr, is covered.
  The root and /dev are remounted read-only, so the only writable places are /tmp
  and the workspace, each bounded.
- environment: PATH, HOME, LANG and TMPDIR only. bubblewrap itself is started with
  no more than that, so no process the sandbox could inspect holds a secret.
- identity: an unprivileged uid. When the service runs as root, bubblewrap is
  started as SANDBOX_UID (nobody): a process whose uid maps to root is exempt from
  RLIMIT_NPROC, and that limit is what stops a fork bomb here (no cgroups needed).
- limits, set inside the sandbox before any user code runs (RLIMIT_NPROC must be
  set inside the new user namespace to count only this sandbox's processes): CPU
  time, address space, file size, processes, open files, no core dumps. From the
  outside: a wall-clock timeout and a cap on the stdout/stderr read, either of which
  kills the sandbox's pid 1 and with it every process in the sandbox.

`run_code` sends the source, the entry point's name and a JSON payload on stdin to
a small fixed runner (`_RUNNER`, under `python -I -S`, so neither site-packages nor
the environment influence it), which `exec`s the source in a fresh namespace inside
the sandbox and sends the JSON reply on a private pipe, not stdout, so whatever the
code prints can neither break nor be mistaken for the result. Every way it can go
wrong is its own `SandboxError`. `run_command` runs a program (no shell) over a
caller's workspace, with blocked paths left out or covered; `create_workspace` and
`remove_workspace` make and remove such workspaces.

There is no unsandboxed fallback: when bubblewrap is missing or cannot start,
the call raises `SandboxUnavailable` (callers answer FAILED_PRECONDITION).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import posixpath
import shutil
import signal
import stat
import sys
import sysconfig
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Where bubblewrap is; a bare name is looked up on PATH at call time.
BWRAP = "bwrap"
# The interpreter that runs user code inside the sandbox. None: the service's own
# base interpreter when it lives under /usr (the Docker image's /usr/local/bin/python3),
# else the system /usr/bin/python3. It must live under /usr, the only tree bound in:
# a virtualenv or a pyenv install under /root or /work is deliberately not visible.
PYTHON: str | None = None
# The uid/gid bubblewrap runs as when the service runs as root (see module docstring).
SANDBOX_UID = 65534
SANDBOX_GID = 65534
# Processes (threads count too) one sandbox may have at a time.
MAX_PROCESSES = 64
# Largest file the sandbox may write, and the size of its tmpfs /tmp (and of the
# throwaway /workspace when the caller gives none). tmpfs is memory outside the
# address-space limit, so it gets its own bound.
MAX_FILE_BYTES = 64 << 20
TMPFS_BYTES = 64 << 20
MAX_OPEN_FILES = 256

# Exit statuses bubblewrap reports for a sandboxed command killed by a signal.
_KILLED_BY = 128
# What messages from user code (exception text) are cut to in errors.
_MESSAGE_LIMIT = 500
# The first byte the code's pipe carries, written once inside: bubblewrap did its part.
_STARTED = b"S"
# Host top-level entries that are links into /usr on merged-/usr systems (Debian 12)
# or real directories on older ones; either way the sandbox gets the same shape.
_SYSTEM_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_SANDBOX_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/workspace",
    "LANG": "C.UTF-8",
    "TMPDIR": "/tmp",
}
_WORKSPACE_PREFIX = "agentmesh-workspace-"
# Per-workspace locks, dropped with the last run that holds one (see _workspace_lock).
_WORKSPACE_LOCKS: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


class SandboxError(Exception):
    """User code or a command could not complete in the sandbox; the message is safe to
    show the user who wrote the code (it carries nothing from the host)."""


class SandboxUnavailable(SandboxError):
    """bubblewrap is missing or could not start the sandbox; nothing ran. Callers answer
    FAILED_PRECONDITION; there is no unsandboxed fallback."""


class SandboxTimeout(SandboxError):
    """The code ran past its wall-clock timeout or its CPU time limit and was killed."""


class SandboxMemoryExceeded(SandboxError):
    """The code ran out of its memory (address space) limit."""


class SandboxCrashed(SandboxError):
    """The code raised, did not define its entry point, or died without a result."""

    def __init__(self, message: str, *, error_type: str = "", line: int | None = None):
        super().__init__(message)
        self.error_type = error_type
        self.line = line


class SandboxBadOutput(SandboxError):
    """The code's result was not JSON, or it printed or returned more than allowed."""


@dataclass(frozen=True)
class CommandResult:
    """What a command run by `run_command` left behind. `truncated`: it wrote more than
    max_output_bytes to a stream, so it was killed and only the first bytes are kept."""

    exit_code: int
    stdout: str
    stderr: str
    truncated: bool = False


# Both programs inside the sandbox start with this; bubblewrap runs them as pid 1
# (--as-pid-1) with `<fd> <limits>` as their first arguments. Written for any
# Python 3.8+, since the sandbox's interpreter is the system one.
#
# Why our own init: bubblewrap's init exits as soon as the command does, before it is
# reaped, so every run would leave a zombie for the host's pid 1 (which in a container
# may be agentmesh itself, and never reaps it) and bubblewrap could return while the
# namespace's other processes are still being killed. This init is bubblewrap's direct
# child: it waits for the code (reaping orphans meanwhile), exits with its status, and
# the kernel kills whatever is left in the pid namespace before bubblewrap can reap it.
# It runs no user code; signals from inside the namespace cannot kill a pid 1.
_PROLOGUE = r"""
import os, resource, signal, sys

fd = int(sys.argv[1])
os.set_inheritable(fd, False)  # what the code runs does not get it
# Nothing but stdio and our pipe: an inherited fd of a host file or directory would be
# a way around every mount decision.
os.closerange(3, fd)
os.closerange(fd + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
os.write(fd, b"S")
child = os.fork()
if child:
    os.close(fd)
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            break
    if os.WIFSIGNALED(status):
        os._exit(128 + os.WTERMSIG(status))
    os._exit(os.WEXITSTATUS(status))
# Writing past the file-size limit then fails with EFBIG (an error the code sees)
# rather than killing the process with SIGXFSZ; ignoring survives exec.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
for limit in sys.argv[2].split(","):
    name, soft, hard = limit.split(":")
    resource.setrlimit(getattr(resource, name), (int(soft), int(hard)))
"""

# The program for `run_code`: the request JSON on stdin, the reply on fd.
_RUNNER = (
    _PROLOGUE
    + r"""
import json

reply_fd = fd
request = json.loads(sys.stdin.buffer.read())
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
os.close(null)
MEMORY = b'{"error": {"kind": "memory"}}'


def reply(document):
    data = json.dumps(document, ensure_ascii=False, allow_nan=False).encode("utf-8")
    view = memoryview(data)
    while view:
        view = view[os.write(reply_fd, view):]


def describe(exc):
    try:
        message = exc.msg if isinstance(exc, SyntaxError) else str(exc)
    except BaseException:
        message = "(the exception's message could not be read)"
    line = getattr(exc, "lineno", None) if isinstance(exc, SyntaxError) else None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<code>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return {"kind": "exception", "type": type(exc).__name__, "message": message[:2000],
            "line": line}


def main():
    namespace = {"__name__": "__sandbox__", "__builtins__": __builtins__}
    entry = request["entry"]
    payload = request["payload"]
    try:
        exec(compile(request["source"], "<code>", "exec"), namespace)
        function = namespace.get(entry)
        if not callable(function):
            raise NameError("the code defines no function %r" % entry)
        result = function(**payload) if isinstance(payload, dict) else function(payload)
        if hasattr(result, "__await__"):
            if hasattr(result, "close"):
                result.close()
            raise TypeError("%s must be a plain def, not async def" % entry)
    except MemoryError:
        return None
    except BaseException as exc:
        return {"error": describe(exc)}
    try:
        reply({"ok": result})
    except MemoryError:
        return None
    except BaseException as exc:
        return {"error": {"kind": "bad_output", "message": "the return value is not JSON: "
                          + describe(exc)["message"]}}
    return {}


try:
    outcome = main()
    if outcome is None:
        os.write(reply_fd, MEMORY)
    elif outcome:
        reply(outcome)
except MemoryError:
    os.write(reply_fd, MEMORY)
# Not sys.exit: threads the code left running must not keep the sandbox alive.
os._exit(0)
"""
)

# The program for `run_command`: the command follows the limits in argv.
_LAUNCHER = (
    _PROLOGUE
    + r"""
argv = sys.argv[3:]
try:
    os.execvp(argv[0], argv)
except OSError as exc:
    os.write(2, ("%s: %s\n" % (argv[0], exc.strerror)).encode())
    os._exit(127 if isinstance(exc, FileNotFoundError) else 126)
"""
)


async def run_code(
    source: str,
    entry: str,
    payload: dict[str, Any] | list[Any] | str,
    *,
    timeout: float = 10,  # noqa: ASYNC109 (the call's deadline, enforced inside)
    memory_mb: int = 256,
    max_output_bytes: int = 1 << 20,
    workspace: Path | None = None,
    read_only: bool = False,
) -> Any:
    """Runs `source` in the sandbox and returns what its function `entry` returned.

    The entry is called as `entry(**payload)` when the payload is an object (a code
    tool's `def main(**arguments)`), else as `entry(payload)` (a code guardrail's
    `def check(text)`). Its return value must be JSON-serialisable.

    workspace: a directory from `create_workspace`, bound at /workspace (read-only
    with read_only); None gives a throwaway tmpfs. Raises a `SandboxError` subclass, or
    ValueError for arguments no sandbox could take.
    """
    _check_limits(timeout, memory_mb, max_output_bytes)
    request = json.dumps({"source": source, "entry": entry, "payload": payload})
    outcome = await _run_sandboxed(
        _RUNNER,
        [],
        stdin=request.encode(),
        workspace=workspace,
        blocked_paths=[],
        read_only=read_only,
        seconds=timeout,
        memory_mb=memory_mb,
        max_output_bytes=max_output_bytes,
    )
    if outcome.timed_out:
        raise SandboxTimeout(f"the code ran longer than its {timeout:g} s timeout")
    if outcome.overflowed:
        raise SandboxBadOutput(f"the code printed more than {max_output_bytes} bytes")
    if outcome.reply_overflowed:
        raise SandboxBadOutput(f"the code's result is larger than {max_output_bytes} bytes")
    if outcome.reply:
        return _read_reply(outcome.reply, memory_mb)
    raise _died(outcome, timeout)


async def run_command(
    argv: list[str],
    *,
    workspace: Path,
    blocked_paths: list[str],
    read_only: bool,
    timeout: float = 30,  # noqa: ASYNC109 (the call's deadline, enforced inside)
    max_output_bytes: int = 1 << 20,
    memory_mb: int = 512,
) -> CommandResult:
    """Runs `argv` (no shell) in the sandbox with `workspace` at /workspace as its cwd.

    The workspace (from `create_workspace`, e.g. one per agent run) is writable unless
    read_only, which also makes /tmp read-only; one command runs at a time per
    workspace. blocked_paths are absolute paths as the sandbox sees them (/etc,
    /workspace/secrets, /usr/bin/curl): left out of the sandbox, or covered, a
    directory by an empty unreadable one and a file by an unreadable device, so their
    contents cannot be read (see check_blocked_paths for what is refused).

    Raises `SandboxTimeout` or `SandboxUnavailable`; anything else is the command's
    own exit code and output (exit 128+N: killed by signal N; `truncated`: it wrote
    more than max_output_bytes to a stream and was killed).
    """
    if not argv or not all(isinstance(arg, str) and "\0" not in arg for arg in argv):
        raise ValueError("argv must be a non-empty list of strings without NUL")
    _check_limits(timeout, memory_mb, max_output_bytes)
    outcome = await _run_sandboxed(
        _LAUNCHER,
        argv,
        stdin=None,
        workspace=workspace,
        blocked_paths=blocked_paths,
        read_only=read_only,
        seconds=timeout,
        memory_mb=memory_mb,
        max_output_bytes=max_output_bytes,
    )
    if outcome.timed_out:
        raise SandboxTimeout(f"{argv[0]} ran longer than its {timeout:g} s timeout")
    return CommandResult(
        exit_code=outcome.returncode,
        stdout=outcome.stdout.decode("utf-8", "replace"),
        stderr=outcome.stderr.decode("utf-8", "replace"),
        truncated=outcome.overflowed,
    )


def sandbox_available() -> bool:
    """Whether bubblewrap and a sandbox interpreter are installed (not whether the kernel
    lets bubblewrap create namespaces: only a run can tell)."""
    try:
        _bwrap_path()
        _python_path()
    except SandboxUnavailable:
        return False
    return True


@dataclass
class _Outcome:
    returncode: int
    stdout: bytes
    stderr: bytes
    reply: bytes
    timed_out: bool
    overflowed: bool
    reply_overflowed: bool


def _read_reply(reply: bytes, memory_mb: int) -> Any:
    try:
        document = json.loads(reply)
    except ValueError:
        # Only the code itself could have written to the reply pipe besides the runner.
        raise SandboxBadOutput("the code's result is not valid JSON") from None
    if not isinstance(document, dict):
        raise SandboxBadOutput("the code's result is not valid JSON")
    if "ok" in document:
        return document["ok"]
    error = document.get("error")
    if not isinstance(error, dict):
        raise SandboxBadOutput("the code's result is not valid JSON")
    kind = error.get("kind")
    if kind == "memory":
        raise SandboxMemoryExceeded(f"the code used more than its {memory_mb} MB of memory")
    if kind == "bad_output":
        raise SandboxBadOutput(_clean(str(error.get("message", ""))))
    error_type = _clean(str(error.get("type", "Exception")), 100)
    message = _clean(str(error.get("message", "")))
    line = error.get("line")
    line = line if isinstance(line, int) and not isinstance(line, bool) else None
    where = f" (line {line})" if line is not None else ""
    text = f"{error_type}: {message}{where}" if message else f"{error_type}{where}"
    raise SandboxCrashed(text, error_type=error_type, line=line)


def _died(outcome: _Outcome, timeout: float) -> SandboxError:
    """The error for a sandbox that ended without a reply."""
    code = outcome.returncode
    if code == _KILLED_BY + signal.SIGXCPU:
        # The soft CPU limit: threads can use CPU time faster than the wall clock runs.
        return SandboxTimeout(f"the code used its {_cpu_seconds(timeout)} s of CPU time")
    if code > _KILLED_BY:
        try:
            name = signal.Signals(code - _KILLED_BY).name
        except ValueError:
            name = f"signal {code - _KILLED_BY}"
        return SandboxCrashed(f"the code was killed by {name}", error_type=name)
    return SandboxCrashed(f"the code exited (status {code}) without returning a result")


def _clean(text: str, limit: int = _MESSAGE_LIMIT) -> str:
    """Cuts text to `limit` characters and escapes control characters, so a message
    from user code cannot forge log lines or terminal output."""
    if len(text) > limit:
        text = text[:limit] + "…"
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _check_limits(timeout: float, memory_mb: int, max_output_bytes: int) -> None:
    if not timeout > 0 or memory_mb < 16 or max_output_bytes < 1:
        raise ValueError("timeout must be positive, memory_mb at least 16, max_output_bytes >= 1")


def _cpu_seconds(timeout: float) -> int:
    return max(1, math.ceil(timeout))


def _limits(timeout: float, memory_mb: int) -> str:
    """The rlimits as `NAME:soft:hard,...`: parsed without importing json, which would
    add ~10 ms to every command's start."""
    cpu = _cpu_seconds(timeout)
    limits = {
        # Soft then hard: SIGXCPU first, SIGKILL a second later if it is handled.
        "RLIMIT_CPU": (cpu, cpu + 1),
        "RLIMIT_AS": (memory_mb << 20,) * 2,
        "RLIMIT_FSIZE": (MAX_FILE_BYTES,) * 2,
        "RLIMIT_NPROC": (MAX_PROCESSES,) * 2,
        "RLIMIT_NOFILE": (MAX_OPEN_FILES,) * 2,
        "RLIMIT_CORE": (0, 0),
    }
    return ",".join(f"{name}:{soft}:{hard}" for name, (soft, hard) in limits.items())


def _bwrap_path() -> str:
    found = shutil.which(BWRAP)
    if found is None:
        raise SandboxUnavailable(
            "the sandbox (bubblewrap) is not installed on this server; code cannot run"
        )
    return found


def _python_path() -> str:
    if PYTHON is not None:
        candidates = [PYTHON]
    else:
        candidates = [
            os.path.join(sys.base_prefix, "bin", "python3"),
            "/usr/bin/python3",
            "/usr/local/bin/python3",
        ]
    for candidate in candidates:
        real = os.path.realpath(candidate)
        if real.startswith("/usr/") and os.access(real, os.X_OK):
            return real
    raise SandboxUnavailable("the sandbox has no Python interpreter under /usr; code cannot run")


def _masked_site_packages() -> list[str]:
    """The service's base install's site-packages when it lives under /usr (the Docker
    image installs agentmesh there): not for the sandbox to read."""
    found = []
    for key in ("purelib", "platlib"):
        path = sysconfig.get_path(
            key, vars={"base": sys.base_prefix, "platbase": sys.base_exec_prefix}
        )
        if path.startswith("/usr/") and os.path.isdir(path) and path not in found:
            found.append(path)
    return found


def check_blocked_paths(paths: list[str]) -> list[str]:
    """Validates a computer tool's blocked paths; returns them normalised.

    Raises ValueError naming the path when one is not absolute, or would hide what the
    sandbox itself needs to start (the workspace, the interpreter, its standard library,
    the shared libraries): the registry can call this when a tool is saved.
    """
    runtime = _runtime_paths()
    normalised = []
    for path in paths:
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            raise ValueError(f"blocked path {path!r} is not an absolute path")
        path = _resolve_system(posixpath.normpath(path).replace("//", "/"))
        for needed in runtime:
            if _within(needed, path):
                raise ValueError(
                    f"blocked path {path!r} would hide {needed}, which the sandbox needs"
                )
        if _within(path, runtime[1]):  # inside the standard library
            raise ValueError(f"blocked path {path!r} is part of the sandbox's Python")
        normalised.append(path)
    return normalised


def _within(path: str, parent: str) -> bool:
    return parent == "/" or path == parent or path.startswith(parent + "/")


def _runtime_paths() -> list[str]:
    """What must stay visible for the sandbox to start: the workspace, the interpreter,
    its standard library (second, see check_blocked_paths) and the shared libraries."""
    python = _python_path()
    stdlib = posixpath.join(
        posixpath.dirname(posixpath.dirname(python)), "lib", posixpath.basename(python)
    )
    needed = ["/workspace", python, stdlib]
    multiarch = sysconfig.get_config_var("MULTIARCH")
    for lib in ("/usr/lib64", f"/usr/lib/{multiarch}" if multiarch else "/usr/lib"):
        if os.path.isdir(lib):
            needed.append(os.path.realpath(lib))
    return needed


def _resolve_system(path: str) -> str:
    """A path outside the workspace as the host resolves it (/bin/ls -> /usr/bin/ls):
    system trees are the host's and trusted, and a cover must land on the real path."""
    if path == "/workspace" or path.startswith("/workspace/"):
        return path
    top = "/" + path.split("/")[1]
    if top in ("/usr", "/etc") or top[1:] in _SYSTEM_DIRS:
        return os.path.realpath(path)
    return path


def _mounts(
    *, workspace: Path | None, blocked_paths: list[str], read_only: bool
) -> tuple[list[str], list[int]]:
    """bubblewrap's filesystem arguments, in order (an allowlist, never the host's /), and
    the directory fds they refer to, which the caller passes to bubblewrap and closes."""
    blocked = check_blocked_paths(blocked_paths)

    def left_out(path: str) -> bool:
        return any(_within(path, b) for b in blocked)

    args: list[str] = []
    if not left_out("/usr"):
        args += ["--ro-bind", "/usr", "/usr"]
    for name in _SYSTEM_DIRS:
        host = "/" + name
        if left_out(host) or left_out(os.path.realpath(host)):
            continue
        if os.path.islink(host):
            args += ["--symlink", os.readlink(host), host]
        elif os.path.isdir(host):
            args += ["--ro-bind", host, host]
    # Debian's /usr/bin/awk and friends point through /etc/alternatives; the rest of
    # /etc (shadow, ssl keys, the host's users and resolver config) stays out.
    for host in ("/etc/alternatives", "/etc/ld.so.cache"):
        if not left_out(host) and os.path.exists(host):
            args += ["--ro-bind", host, host]
    if not left_out("/proc"):
        args += ["--proc", "/proc"]
    if not left_out("/dev"):
        args += ["--dev", "/dev"]
    tmp = not left_out("/tmp")
    if tmp:
        args += ["--size", str(TMPFS_BYTES), "--tmpfs", "/tmp"]
    if workspace is None:
        args += ["--size", str(TMPFS_BYTES), "--tmpfs", "/workspace"]
    else:
        args += ["--ro-bind" if read_only else "--bind", str(workspace), "/workspace"]
    for path in _masked_site_packages() + blocked:
        if path.startswith(("/usr/", "/etc/alternatives/")) and not left_out(
            posixpath.dirname(path)
        ):
            args += _cover(path, os.lstat(path) if os.path.lexists(path) else None)
    fds: list[int] = []
    if workspace is not None:
        try:
            for path in blocked:
                if path.startswith("/workspace/"):
                    args += _cover_in_workspace(path, workspace, read_only, fds)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
    ro = ["/", "/dev"] if "--dev" in args else ["/"]
    if read_only:
        ro += ["/tmp"] if tmp else []
        ro += ["/workspace"] if workspace is None else []
    for path in ro:
        args += ["--remount-ro", path]
    return args + ["--chdir", "/workspace"], fds


def _cover(path: str, info: os.stat_result | None) -> list[str]:
    """Arguments hiding what is at `path`: a directory behind an empty one nobody may
    open, a file behind an empty one; nothing there, nothing to hide."""
    if info is None or stat.S_ISLNK(info.st_mode):
        # A link's target is covered, or not, under its own path.
        return []
    if stat.S_ISDIR(info.st_mode):
        return ["--perms", "0000", "--tmpfs", path, "--remount-ro", path]
    return ["--ro-bind", "/dev/null", path]


def _cover_in_workspace(path: str, workspace: Path, read_only: bool, fds: list[int]) -> list[str]:
    """Covers a blocked path inside the workspace, which earlier commands may have shaped.

    The path is walked from the workspace without following links (a link planted by an
    earlier command must not steer a host-side lookup). In a writable workspace each
    directory above the blocked one is also bound onto itself through the fd just
    opened: a mount point cannot be renamed or removed, so `mv parent elsewhere` cannot
    carry the hidden contents out from under their cover for the next command.
    """
    parts = path.split("/")[2:]
    # Only fds named by --bind-fd may reach bubblewrap, which closes those before it
    # runs anything: any other fd of a host directory would be a way out of the sandbox.
    opened = [os.open(workspace, os.O_PATH | os.O_DIRECTORY)]
    try:
        for name in parts[:-1]:
            flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW
            opened.append(os.open(name, flags, dir_fd=opened[-1]))
        info = os.stat(parts[-1], dir_fd=opened[-1], follow_symlinks=False)
    except OSError:
        info = None  # not (or not really) there: nothing of the host to hide
    cover = _cover(path, info)
    keep = opened[1:] if cover and not read_only else []
    for fd in opened:
        if fd not in keep:
            os.close(fd)
    fds += keep
    binds = [
        ["--bind-fd", str(fd), "/workspace/" + "/".join(parts[: index + 1])]
        for index, fd in enumerate(keep)
    ]
    return [arg for bind in binds for arg in bind] + cover


def create_workspace(parent: Path | None = None) -> Path:
    """Makes a fresh, empty workspace for one run's sandboxed code or commands (under
    `parent`, default the system temp dir). The caller owns it and removes it with
    `remove_workspace` when the run ends. Under root it belongs to the sandbox uid,
    which is what run_code and run_command accept there."""
    path = Path(tempfile.mkdtemp(prefix=_WORKSPACE_PREFIX, dir=parent))
    if os.geteuid() == 0:
        os.chown(path, SANDBOX_UID, SANDBOX_GID)
    _check_reachable(path)
    return path


def remove_workspace(path: Path) -> None:
    """Removes a workspace and whatever sandboxed commands left in it, including
    directories they made unreadable; links in it are removed, never followed. Call it
    once no sandbox uses the workspace any more."""
    if not Path(path).name.startswith(_WORKSPACE_PREFIX):
        # Destructive: refuse anything create_workspace did not make.
        raise ValueError(f"{path} is not a workspace made by create_workspace()")
    if not os.path.lexists(path):
        return
    # A command may have left `chmod 000` directories, which only root could remove as
    # they are. Each directory is opened without following links and changed through
    # its fd, so a link can never make this chmod a host path.
    pending = [str(path)]
    while pending:
        directory = pending.pop()
        try:
            fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            os.chmod(f"/proc/self/fd/{fd}", 0o700)
            entries = list(os.scandir(directory))
        except OSError:
            continue
        finally:
            os.close(fd)
        pending += [entry.path for entry in entries if entry.is_dir(follow_symlinks=False)]
    shutil.rmtree(path)


def _check_reachable(workspace: Path) -> None:
    """Under root, bubblewrap runs as SANDBOX_UID and must be able to reach the workspace."""
    if os.geteuid() != 0:
        return
    for parent in Path(workspace).resolve().parents:
        info = os.stat(parent)
        if not info.st_mode & stat.S_IXOTH and info.st_uid != SANDBOX_UID:
            raise ValueError(
                f"the sandbox uid cannot reach the workspace: {parent} is closed to it; "
                "make workspaces with create_workspace() under an open directory"
            )


def _hand_over(workspace: Path) -> None:
    """Under root: makes everything in a workspace belong to the sandbox uid, so commands
    can change files the caller put there.

    Only a workspace that already belongs to the sandbox uid (create_workspace made it)
    is walked, so a wrong path can never chown a host tree. fwalk with dir_fd and no
    link following: earlier commands may have left links to host paths in it.
    """
    uid, gid = SANDBOX_UID, SANDBOX_GID
    top = os.stat(workspace, follow_symlinks=False)
    if not stat.S_ISDIR(top.st_mode) or top.st_uid != uid:
        raise ValueError("as root, a workspace must be a directory made by create_workspace()")
    _check_reachable(workspace)
    for _root, dirs, files, root_fd in os.fwalk(workspace, follow_symlinks=False):
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                info = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
                if (info.st_uid, info.st_gid) != (uid, gid):
                    os.chown(name, uid, gid, dir_fd=root_fd, follow_symlinks=False)


def _workspace_lock(workspace: Path | None) -> asyncio.Lock | contextlib.nullcontext[None]:
    """One sandbox at a time per workspace: blocked paths are checked on the host just
    before bubblewrap mounts over them, and no other command may reshape the workspace
    (a directory swapped for a link) in between."""
    if workspace is None:
        return contextlib.nullcontext()
    key = os.path.realpath(workspace)
    lock = _WORKSPACE_LOCKS.get(key)
    if lock is None:
        lock = _WORKSPACE_LOCKS[key] = asyncio.Lock()
    return lock


async def _run_sandboxed(
    program: str,
    arguments: list[str],
    *,
    stdin: bytes | None,
    workspace: Path | None,
    blocked_paths: list[str],
    read_only: bool,
    seconds: float,
    memory_mb: int,
    max_output_bytes: int,
) -> _Outcome:
    bwrap = _bwrap_path()
    python = _python_path()
    check_blocked_paths(blocked_paths)
    async with _workspace_lock(workspace):
        as_root = os.geteuid() == 0
        if workspace is not None and as_root:
            await asyncio.to_thread(_hand_over, workspace)
        # Opened here and closed in _start whatever happens, with no await in between.
        mounts, mount_fds = _mounts(
            workspace=workspace, blocked_paths=blocked_paths, read_only=read_only
        )
        env_args: list[str] = []
        for name, value in _SANDBOX_ENV.items():
            env_args += ["--setenv", name, value]
        argv = [
            bwrap,
            "--unshare-user",
            "--unshare-pid",
            "--as-pid-1",  # pid 1 is our init, see _PROLOGUE
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-net",
            "--unshare-cgroup-try",
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
            "--hostname",
            "sandbox",
            "--clearenv",
            *env_args,
            *mounts,
            "--",
            python,
            "-I",
            "-S",
            "-B",
            "-c",
            program,
        ]
        return await _start(
            argv,
            [_limits(seconds, memory_mb), *arguments],
            mount_fds,
            as_root,
            stdin=stdin,
            seconds=seconds,
            max_output_bytes=max_output_bytes,
        )


async def _start(
    argv: list[str],
    arguments: list[str],
    mount_fds: list[int],
    as_root: bool,
    *,
    stdin: bytes | None,
    seconds: float,
    max_output_bytes: int,
) -> _Outcome:
    """Starts `argv <reply fd> arguments` and watches it: feeds stdin, reads stdout,
    stderr and the reply pipe (each capped), and kills the sandbox on the deadline or a
    cap. Closes mount_fds."""
    try:
        pipes = [os.pipe() for _ in ("stdout", "stderr", "reply")]
    except BaseException:
        for fd in mount_fds:
            os.close(fd)
        raise
    (out_read, out_write), (err_read, err_write), (reply_read, reply_write) = pipes
    drop = {"user": SANDBOX_UID, "group": SANDBOX_GID, "extra_groups": []} if as_root else {}
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            str(reply_write),
            *arguments,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=out_write,
            stderr=err_write,
            pass_fds=(reply_write, *mount_fds),
            # Nothing secret in bubblewrap's own environment either.
            env=dict(_SANDBOX_ENV),
            # Its own process group, the last resort of kill_group below.
            start_new_session=True,
            **drop,  # type: ignore[arg-type]
        )
    except BaseException as exc:
        for fd in (out_read, err_read, reply_read):
            os.close(fd)
        if isinstance(exc, OSError):
            log.error("sandbox: cannot start bubblewrap: %s", exc)
            raise SandboxUnavailable("the sandbox (bubblewrap) could not be started") from None
        raise
    finally:
        # bubblewrap has its copies; it closes the mount fds before running anything.
        for fd in (out_write, err_write, reply_write, *mount_fds):
            os.close(fd)

    loop = asyncio.get_running_loop()
    transports: list[asyncio.BaseTransport] = []
    unattached = [out_read, err_read, reply_read]  # read ends no transport owns yet
    overflow: list[str] = []

    def kill() -> None:
        # Killing our init (pid 1 inside, bubblewrap's only child) ends the whole pid
        # namespace: its exit completes only once every process in it is gone, and
        # bubblewrap then reaps it and exits by itself. Killing bubblewrap instead would
        # leave the init to the host's pid 1 and return while the sandbox still runs.
        try:
            with open(f"/proc/{process.pid}/task/{process.pid}/children") as file:
                children = [int(pid) for pid in file.read().split()]
        except OSError:
            children = []
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not children:
            kill_group()

    def kill_group() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    async def attach(fd: int) -> asyncio.StreamReader:
        reader = asyncio.StreamReader()
        unattached.remove(fd)
        file = os.fdopen(fd, "rb", 0)
        try:
            transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), file
            )
        except BaseException:
            file.close()
            raise
        transports.append(transport)
        return reader

    async def read(reader: asyncio.StreamReader, name: str, limit: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while chunk := await reader.read(65536):
            if size + len(chunk) > limit:
                if name not in overflow:
                    overflow.append(name)
                    kill()
                # Keep reading to EOF: the pipe closes once the sandbox is gone.
                chunk = chunk[: limit - size]
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)

    async def feed() -> None:
        if stdin is None or process.stdin is None:
            return
        # The sandbox dying before it read everything is reported from its exit.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            process.stdin.write(stdin)
            await process.stdin.drain()
            process.stdin.close()

    timed_out = False
    try:
        async with asyncio.timeout(seconds):
            readers = [await attach(fd) for fd in (out_read, err_read, reply_read)]
            _, out, err, reply, returncode = await asyncio.gather(
                feed(),
                read(readers[0], "stdout", max_output_bytes),
                read(readers[1], "stderr", max_output_bytes),
                read(readers[2], "reply", max_output_bytes + len(_STARTED)),
                process.wait(),
            )
    except TimeoutError:
        timed_out = True
    finally:
        # Also on cancellation: nothing outlives the call.
        if process.returncode is None:
            kill()
            try:
                await asyncio.wait_for(process.wait(), 2)
            except TimeoutError:
                kill_group()
                await process.wait()
        if process.stdin is not None:
            process.stdin.close()
        for transport in transports:
            transport.close()
        for fd in unattached:
            os.close(fd)
    if timed_out:
        return _Outcome(-signal.SIGKILL, b"", b"", b"", True, False, False)

    if not reply.startswith(_STARTED):
        log.error("sandbox: bubblewrap failed to start: %s", _clean(err.decode(errors="replace")))
        raise SandboxUnavailable("the sandbox (bubblewrap) could not be started")
    return _Outcome(
        returncode=returncode,
        stdout=out,
        stderr=err,
        reply=reply[len(_STARTED) :],
        timed_out=False,
        overflowed="stdout" in overflow or "stderr" in overflow,
        reply_overflowed="reply" in overflow,
    )
