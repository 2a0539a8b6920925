"""What every peer of the benchmark needs: free ports, waiting for a port,
stopping a server, process trees and their memory."""

import os
import signal
import socket
import subprocess
import time


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_port(port: int, alive, timeout: float, what: str, log_tail) -> None:
    """Waits until `port` accepts connections; raises if `alive()` turns
    false or `timeout` seconds pass, with the log's tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"{what} exited before it was ready:\n{log_tail()}")
        if port_open(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s:\n{log_tail()}")


def stop_group(proc) -> None:
    """Stops a server started with `start_new_session=True`: SIGTERM to its
    process group, SIGKILL after 20 s, then SIGKILL to whatever of the
    group is left (workers that outlive their parent)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def children(pid: int) -> list[int]:
    """`pid` and all its descendants that are alive."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # The command name may hold spaces: the ppid follows ")".
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if os.path.exists(f"/proc/{p}"):
            out.append(p)
            todo.extend(parents.get(p, []))
    return out


def rss_kib(pids: list[int]) -> int:
    """The memory of `pids`, in KiB: the sum of their proportional set
    sizes (Pss: resident pages, each shared page divided among the
    processes sharing it), so a server of many processes is not charged
    its shared libraries once per process. For one process, Pss is its
    resident set."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def tail(path: str, n: int = 20) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no log)"
