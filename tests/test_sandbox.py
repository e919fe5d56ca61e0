"""The sandbox contains what user code and commands try, and reports each failure as its
own error. Runs the real bubblewrap (Debian's `bubblewrap`, which make setup installs)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections import Counter
from pathlib import Path

import pytest

from agentmesh import sandbox
from agentmesh.sandbox import (
    CommandResult,
    SandboxBadOutput,
    SandboxCrashed,
    SandboxMemoryExceeded,
    SandboxTimeout,
    SandboxUnavailable,
    run_code,
    run_command,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def workspace():
    """A per-run workspace as the runner makes one."""
    path = sandbox.create_workspace()
    yield path
    sandbox.remove_workspace(path)
    assert not path.exists()


def processes_by_pid_namespace() -> Counter[str]:
    """Host processes running as the sandbox's uid, counted by pid namespace ("pid:[N]",
    as a sandbox also sees its own): one sandbox's processes, whatever else runs."""
    uid = sandbox.SANDBOX_UID if os.geteuid() == 0 else os.geteuid()
    found: Counter[str] = Counter()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    found[os.readlink(f"/proc/{entry}/ns/pid")] += 1
            except OSError:
                pass  # gone meanwhile
    return found


# --- normal code -------------------------------------------------------------------------


async def test_code_tool_returns_its_json_unicode_and_nested_data_intact():
    source = """
def main(city, days, tags):
    return {"city": city.upper(), "forecast": [{"day": d, "t": 20.5 + d} for d in range(days)],
            "tags": tags, "note": "ünïcødé ✓ 雨", "none": None, "ok": True}
"""
    result = await run_code(source, "main", {"city": "zürich", "days": 2, "tags": ["a", "b"]})
    assert result == {
        "city": "ZÜRICH",
        "forecast": [{"day": 0, "t": 20.5}, {"day": 1, "t": 21.5}],
        "tags": ["a", "b"],
        "note": "ünïcødé ✓ 雨",
        "none": None,
        "ok": True,
    }


async def test_code_guardrail_gets_the_text_and_returns_a_dict():
    source = """
def check(text):
    return {"tripwire_triggered": "password" in text, "length": len(text)}
"""
    assert await run_code(source, "check", "my password is hunter2") == {
        "tripwire_triggered": True,
        "length": 22,
    }
    assert await run_code(source, "check", "hello") == {"tripwire_triggered": False, "length": 5}


async def test_prints_neither_break_nor_forge_the_result():
    source = """
import os, sys
def main():
    print('{"ok": "forged"}')
    print('{"error": {"kind": "memory"}}', file=sys.stderr)
    os.write(1, b'S{"ok": "forged at the fd level"}')
    sys.stdout.flush()
    return "real"
"""
    assert await run_code(source, "main", {}) == "real"


async def test_threads_the_code_leaves_running_do_not_hold_the_call():
    source = """
import threading, time
def main():
    threading.Thread(target=lambda: time.sleep(60)).start()
    return 1
"""
    started = time.monotonic()
    assert await run_code(source, "main", {}, timeout=5) == 1
    assert time.monotonic() - started < 10


# --- failures, each with its own error ---------------------------------------------------


async def test_an_exception_is_a_crash_carrying_its_type_message_and_line():
    source = "def main(n):\n    x = 1\n    raise ValueError(f'bad n {n}\\x1b[31m')\n"
    with pytest.raises(SandboxCrashed) as caught:
        await run_code(source, "main", {"n": 7})
    assert caught.value.error_type == "ValueError"
    assert caught.value.line == 3
    # The escape sequence comes back escaped, not as a control character.
    assert str(caught.value) == "ValueError: bad n 7\\x1b[31m (line 3)"


async def test_a_long_exception_message_is_cut():
    with pytest.raises(SandboxCrashed) as caught:
        await run_code("def main():\n    raise RuntimeError('x' * 100000)", "main", {})
    assert caught.value.error_type == "RuntimeError"
    assert len(str(caught.value)) < 600


@pytest.mark.parametrize(
    ("source", "error_type", "text"),
    [
        ("def main(:\n    pass", "SyntaxError", "line 1"),
        ("def other():\n    return 1", "NameError", "defines no function 'main'"),
        ("import sys\ndef main(**kw):\n    sys.exit(3)", "SystemExit", "SystemExit: 3"),
        ("async def main(**kw):\n    return 1", "TypeError", "not async def"),
        ("def main(a):\n    return a", "TypeError", "unexpected keyword argument 'b'"),
    ],
)
async def test_code_that_cannot_run_its_entry_is_a_crash(source, error_type, text):
    with pytest.raises(SandboxCrashed) as caught:
        await run_code(source, "main", {"b": 1})
    assert caught.value.error_type == error_type
    assert text in str(caught.value)


async def test_dying_without_a_result_is_a_crash():
    with pytest.raises(SandboxCrashed, match="exited .status 4. without returning a result"):
        await run_code("import os\ndef main():\n    os._exit(4)", "main", {})
    with pytest.raises(SandboxCrashed, match="killed by SIGSEGV"):
        await run_code(
            "import os, signal\ndef main():\n    os.kill(os.getpid(), signal.SIGSEGV)", "main", {}
        )


@pytest.mark.parametrize(
    ("value", "text"),
    [("float('nan')", "not JSON"), ("object()", "not JSON"), ("{1, 2}", "not JSON")],
)
async def test_a_result_that_is_not_json_is_bad_output(value, text):
    with pytest.raises(SandboxBadOutput, match=text):
        await run_code(f"def main():\n    return {value}", "main", {})


async def test_a_result_larger_than_the_limit_is_bad_output():
    with pytest.raises(SandboxBadOutput, match="result is larger than 1000 bytes"):
        await run_code("def main():\n    return 'x' * 5000", "main", {}, max_output_bytes=1000)


async def test_100_mb_of_output_is_cut_off_and_bad_output():
    source = """
import sys
def main():
    for _ in range(100):
        sys.stdout.write("x" * (1 << 20))
"""
    started = time.monotonic()
    with pytest.raises(SandboxBadOutput, match="printed more than 1048576 bytes"):
        await run_code(source, "main", {}, timeout=20)
    # Killed when the cap was reached, not after writing all of it or at the timeout.
    assert time.monotonic() - started < 10


async def test_an_endless_loop_times_out():
    started = time.monotonic()
    with pytest.raises(SandboxTimeout, match="longer than its 1 s timeout|1 s of CPU time"):
        await run_code("def main():\n    while True:\n        pass", "main", {}, timeout=1)
    assert time.monotonic() - started < 10


async def test_an_endless_sleep_times_out_too():
    # Wall clock, not CPU: a sleeping process uses no CPU time.
    with pytest.raises(SandboxTimeout):
        await run_code("import time\ndef main():\n    time.sleep(60)", "main", {}, timeout=1)


@pytest.mark.parametrize(
    "hog",
    [
        "x = bytearray(1 << 30)",
        "x = []\n    while True:\n        x.append(bytearray(1 << 20))",
    ],
)
async def test_a_memory_hog_hits_the_memory_limit(hog):
    with pytest.raises(SandboxMemoryExceeded, match="more than its 128 MB"):
        await run_code(f"def main():\n    {hog}", "main", {}, memory_mb=128)


async def test_a_fork_bomb_is_stopped_at_the_process_limit():
    # Each child sleeps; the parent forks until the kernel refuses.
    source = """
import os, time
def main():
    children = 0
    while True:
        try:
            pid = os.fork()
        except OSError as exc:
            return {"children": children, "errno": exc.errno,
                    "namespace": os.readlink("/proc/self/ns/pid")}
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        children += 1
"""
    result = await run_code(source, "main", {}, timeout=10)
    assert result["errno"] == 11  # EAGAIN: RLIMIT_NPROC
    # Our init and the code count too.
    assert result["children"] == sandbox.MAX_PROCESSES - 2
    # The sleeping children went with the sandbox.
    assert processes_by_pid_namespace()[result["namespace"]] == 0


async def test_a_real_fork_bomb_is_contained_and_the_host_stays_fine():
    source = """
import os
def main():
    while True:
        try:
            os.fork()
        except OSError:
            pass
"""
    # Not the bomb: the host's pid namespace (bubblewrap itself) and sandboxes already there.
    before = set(processes_by_pid_namespace()) | {os.readlink("/proc/self/ns/pid")}
    bomb = asyncio.create_task(run_code(source, "main", {}, timeout=2))
    peak: Counter[str] = Counter()
    while not bomb.done():
        await asyncio.sleep(0.05)
        peak |= processes_by_pid_namespace()
        # The host can still start processes while the bomb runs.
        host = await asyncio.create_subprocess_exec("true")
        assert await asyncio.wait_for(host.wait(), 5) == 0
    with pytest.raises(SandboxTimeout):
        await bomb
    bombs = {namespace: count for namespace, count in peak.items() if namespace not in before}
    assert len(bombs) == 1
    assert 10 < max(bombs.values()) <= sandbox.MAX_PROCESSES
    assert not set(bombs) & set(processes_by_pid_namespace())


# --- what the code cannot see or reach ---------------------------------------------------

PROBE = """
import os
def main(paths):
    found = {}
    for path in paths:
        try:
            with open(path, "rb") as f:
                found[path] = f.read(4096).decode("utf-8", "replace")
        except OSError as exc:
            found[path] = type(exc).__name__
    found["/"] = sorted(os.listdir("/"))
    return found
"""


async def test_host_files_outside_the_workspace_are_not_there(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("host secret")
    paths = [
        "/etc/shadow",
        "/etc/passwd",
        str(REPO / "pyproject.toml"),
        str(outside),
        "/root/.bashrc",
        "/home",
    ]
    found = await run_code(PROBE, "main", {"paths": paths})
    for path in paths:
        assert found[path] == "FileNotFoundError", path
    assert found["/"] == sorted(
        ["bin", "dev", "etc", "lib", "lib64", "proc", "sbin", "tmp", "usr", "workspace"]
    )


async def test_the_host_environment_and_service_secrets_are_not_visible(monkeypatch):
    monkeypatch.setenv("AGENTMESH_SERVICE_TOKEN", "fake-service-token-5f1d")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake-key-5f1d")
    source = """
import os
def main():
    def read(path):
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    return {
        "env": dict(os.environ),
        "self": read("/proc/self/environ"),
        "pid1": read("/proc/1/environ"),
        "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    }
"""
    found = await run_code(source, "main", {})
    assert "5f1d" not in repr(found)
    assert set(found["env"]) <= {"PATH", "HOME", "LANG", "TMPDIR", "PWD"}
    # Its own pid namespace: bubblewrap's init and the code, nothing of the host.
    assert found["pids"] == [1, 2]


FD_PROBE = """
import os
def main():
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            found[fd] = os.readlink("/proc/self/fd/" + fd)
        except OSError:
            pass  # listdir's own, closed by now
    return found
"""


@pytest.mark.parametrize("read_only", [False, True])
async def test_no_host_file_or_directory_is_open_inside(workspace, read_only):
    # Directories bound for blocked paths are opened on the host; none may leak in.
    (workspace / "a" / "b" / "secret").mkdir(parents=True)
    blocked = ["/workspace/a/b/secret"]
    code_fds = await run_code(FD_PROBE, "main", {}, workspace=workspace, read_only=read_only)
    command = await run_command(
        [
            "python3",
            "-I",
            "-c",
            FD_PROBE + "import json\nprint(json.dumps(sorted(main().values())))",
        ],
        workspace=workspace,
        blocked_paths=blocked,
        read_only=read_only,
    )
    assert command.exit_code == 0, command.stderr
    for target in list(code_fds.values()) + json.loads(command.stdout):
        assert target == "/dev/null" or target.startswith("pipe:["), target


async def test_the_network_is_unreachable_even_the_hosts_loopback():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    source = """
import socket
def main(port):
    out = {"interfaces": [name for _, name in socket.if_nameindex()]}
    for name, address in [("host", ("127.0.0.1", port)), ("internet", ("1.1.1.1", 443))]:
        try:
            socket.create_connection(address, timeout=2).close()
            out[name] = "connected"
        except OSError as exc:
            out[name] = type(exc).__name__
    try:
        socket.getaddrinfo("example.com", 443)
        out["dns"] = "resolved"
    except OSError as exc:
        out["dns"] = type(exc).__name__
    return out
"""
    try:
        found = await run_code(source, "main", {"port": port})
    finally:
        listener.close()
    assert found == {
        "interfaces": ["lo"],
        "host": "ConnectionRefusedError",  # its own empty loopback, not the host's
        "internet": "OSError",  # ENETUNREACH: no route anywhere
        "dns": "gaierror",
    }


async def test_two_runs_never_see_each_others_workspace():
    source = """
import os
def main(name):
    before = {"workspace": os.listdir("/workspace"), "tmp": os.listdir("/tmp")}
    for d in ("/workspace", "/tmp"):
        with open(os.path.join(d, name), "w") as f:
            f.write(name)
    return before
"""
    first, second = await asyncio.gather(
        run_code(source, "main", {"name": "first"}), run_code(source, "main", {"name": "second"})
    )
    assert first == second == {"workspace": [], "tmp": []}
    assert await run_code(source, "main", {"name": "third"}) == {"workspace": [], "tmp": []}


async def test_given_workspaces_are_bound_only_into_their_own_run():
    source = """
import os
def main():
    with open("/workspace/written.txt", "w") as f:
        f.write("from the sandbox")
    return sorted(os.listdir("/workspace"))
"""
    a, b = sandbox.create_workspace(), sandbox.create_workspace()
    try:
        (a / "mine.txt").write_text("a's data")
        assert await run_code(source, "main", {}, workspace=a) == ["mine.txt", "written.txt"]
        assert await run_code(source, "main", {}, workspace=b) == ["written.txt"]
        assert (a / "written.txt").read_text() == "from the sandbox"
    finally:
        for path in (a, b):
            sandbox.remove_workspace(path)


async def test_files_are_limited_in_size():
    source = """
def main(size):
    with open("/tmp/big", "wb") as f:
        f.write(b"x" * size)
"""
    with pytest.raises(SandboxCrashed) as caught:
        await run_code(source, "main", {"size": sandbox.MAX_FILE_BYTES + 1})
    assert caught.value.error_type == "OSError"
    assert "File too large" in str(caught.value)


# --- run_command: the computer tool's primitive ------------------------------------------


async def test_a_command_runs_in_the_workspace(workspace):
    (workspace / "in.txt").write_text("input\n")
    result = await run_command(
        ["sh", "-c", "pwd; cat in.txt; echo made > out.txt; echo oops >&2; exit 3"],
        workspace=workspace,
        blocked_paths=[],
        read_only=False,
    )
    assert result == CommandResult(exit_code=3, stdout="/workspace\ninput\n", stderr="oops\n")
    assert (workspace / "out.txt").read_text() == "made\n"


async def test_a_command_that_does_not_exist_exits_127(workspace):
    result = await run_command(
        ["no-such-command"], workspace=workspace, blocked_paths=[], read_only=False
    )
    assert result.exit_code == 127
    assert "No such file or directory" in result.stderr


async def test_blocked_paths_are_not_visible(workspace):
    (workspace / "secrets").mkdir()
    (workspace / "secrets" / "key").write_text("KEY-5f1d")
    (workspace / "notes.txt").write_text("NOTE-5f1d")
    (workspace / "public.txt").write_text("public")
    script = (
        "cat public.txt; echo; cat secrets/key notes.txt; ls secrets; "
        "ls /etc /usr/share/doc; grep -r 5f1d /workspace"
    )
    result = await run_command(
        ["sh", "-c", script],
        workspace=workspace,
        blocked_paths=["/workspace/secrets", "/workspace/notes.txt", "/etc", "/usr/share/doc/"],
        read_only=False,
    )
    assert result.stdout == "public\n"
    assert "5f1d" not in result.stdout + result.stderr
    assert "ls: cannot access '/etc': No such file or directory" in result.stderr
    assert "ls: cannot open directory '/usr/share/doc': Permission denied" in result.stderr


async def test_a_blocked_path_stays_hidden_after_moving_its_parent(workspace):
    (workspace / "a" / "secret").mkdir(parents=True)
    (workspace / "a" / "secret" / "key").write_text("KEY-5f1d")
    blocked = ["/workspace/a/secret"]
    first = await run_command(
        ["sh", "-c", "mv a b || true; mv a/secret c || true; rm -rf a/secret || true"],
        workspace=workspace,
        blocked_paths=blocked,
        read_only=False,
    )
    assert "Device or resource busy" in first.stderr
    second = await run_command(
        ["sh", "-c", "cat */secret/key c/key 2>&1; ls"],
        workspace=workspace,
        blocked_paths=blocked,
        read_only=False,
    )
    assert "5f1d" not in second.stdout
    assert (workspace / "a" / "secret" / "key").read_text() == "KEY-5f1d"


async def test_read_only_prevents_every_write(workspace):
    (workspace / "file.txt").write_text("original")
    result = await run_command(
        ["sh", "-c", "echo changed > file.txt; touch new; touch /tmp/x; mkdir /x; cat file.txt"],
        workspace=workspace,
        blocked_paths=[],
        read_only=True,
    )
    assert result.stdout == "original"
    assert result.stderr.count("Read-only file system") == 4
    assert sorted(os.listdir(workspace)) == ["file.txt"]
    assert (workspace / "file.txt").read_text() == "original"


async def test_blocked_paths_that_would_hide_the_sandbox_itself_are_refused(workspace):
    for path in ["/", "/usr", "/usr/bin/python3", "/workspace", "relative"]:
        with pytest.raises(ValueError):
            await run_command(["ls"], workspace=workspace, blocked_paths=[path], read_only=True)


async def test_a_command_has_the_same_limits(workspace):
    started = time.monotonic()
    with pytest.raises(SandboxTimeout):
        await run_command(
            ["sleep", "30"], workspace=workspace, blocked_paths=[], read_only=True, timeout=1
        )
    assert time.monotonic() - started < 10
    result = await run_command(
        ["yes"], workspace=workspace, blocked_paths=[], read_only=True, max_output_bytes=10_000
    )
    assert result.truncated
    assert len(result.stdout) == 10_000
    result = await run_command(
        ["sh", "-c", "ping -c1 -W1 127.0.0.1 || cat /proc/net/route; id -u"],
        workspace=workspace,
        blocked_paths=[],
        read_only=True,
    )
    assert result.stdout.strip().splitlines()[-1] != "0"  # never root, even as root


# --- no bubblewrap, no code --------------------------------------------------------------


async def test_missing_bubblewrap_is_unavailable_with_no_fallback(monkeypatch, tmp_path, workspace):
    monkeypatch.setattr(sandbox, "BWRAP", "/nonexistent/bwrap")
    marker = tmp_path / "ran"
    source = f"def main():\n    open({str(marker)!r}, 'w').close()\n    return 1"
    with pytest.raises(SandboxUnavailable, match="not installed"):
        await run_code(source, "main", {})
    with pytest.raises(SandboxUnavailable):
        await run_command(["true"], workspace=workspace, blocked_paths=[], read_only=False)
    assert not marker.exists()
    assert not sandbox.sandbox_available()


async def test_bubblewrap_that_fails_to_start_is_unavailable(monkeypatch):
    # A "bwrap" that exits at once, as bubblewrap does when namespaces are not allowed.
    monkeypatch.setattr(sandbox, "BWRAP", "false")
    with pytest.raises(SandboxUnavailable, match="could not be started"):
        await run_code("def main():\n    return 1", "main", {})


# --- workspaces --------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="the guard is for a service running as root")
async def test_as_root_only_workspaces_made_for_the_sandbox_are_accepted(tmp_path):
    # tmp_path is root's and under a directory closed to others: never chowned, refused.
    with pytest.raises(ValueError, match="create_workspace"):
        await run_command(["ls"], workspace=tmp_path, blocked_paths=[], read_only=True)
    assert tmp_path.stat().st_uid == 0


async def test_removing_a_workspace_removes_what_commands_left(workspace):
    outside = sandbox.create_workspace()
    try:
        (outside / "keep.txt").write_text("keep")
        script = f"mkdir -p d/e && touch d/e/f && chmod 000 d/e d && ln -s {outside} link"
        result = await run_command(
            ["sh", "-c", script], workspace=workspace, blocked_paths=[], read_only=False
        )
        assert result.exit_code == 0, result.stderr
        sandbox.remove_workspace(workspace)
        assert not workspace.exists()
        # The link was removed, not followed.
        assert (outside / "keep.txt").read_text() == "keep"
    finally:
        sandbox.remove_workspace(outside)


def test_only_workspaces_are_removed(tmp_path):
    (tmp_path / "data").write_text("x")
    with pytest.raises(ValueError, match="not a workspace"):
        sandbox.remove_workspace(tmp_path)
    assert (tmp_path / "data").exists()
