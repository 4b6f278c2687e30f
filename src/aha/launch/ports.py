"""Ports of one job: free ones chosen at job start unless the config pins them, and who listens.

Two jobs on one node must never share a port. `reserve_ports` binds every wanted port at once:
port 0 for the ones to choose (the kernel gives a port no socket holds), the pinned value for the
others (busy: an error naming the config key), so the choices differ from each other and from
the pins. Between that choice and the real owner's bind a window remains. A collision there
makes the later bind fail with EADDRINUSE, loudly, unless both sockets set SO_REUSEPORT (vLLM
does with several API servers): then the kernel splits connections between them, and only
`foreign_listeners` (Linux /proc) can tell that the port is not one server's alone.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping
from contextlib import ExitStack, suppress

from aha.launch.process_tree import descendants

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's `st` column
# Local addresses (as /proc/net/tcp{,6} writes them) whose sockets take connections to 127.0.0.1:
# IPv4 any and loopback, IPv6 any (dual-stack) and the IPv4-mapped loopback.
_TAKES_LOOPBACK = {"00000000", "0100007F", "0" * 32, "0000000000000000FFFF00000100007F"}


class PortError(RuntimeError):
    """A pinned port that is busy, or a port another process also listens on; names the key."""


def reserve_ports(wanted: Mapping[str, int | None]) -> dict[str, int]:
    """A port per key: the pinned one if nothing holds it on this node, else a free one (None).

    Keys are the config keys the ports come from (e.g. "grpo.vllm_server_port"); a pinned port
    that is in use raises PortError naming its key. The sockets are closed before returning.
    """
    ports: dict[str, int] = {}
    with ExitStack() as stack:
        for key, pinned in sorted(wanted.items(), key=lambda kv: kv[1] is None):  # pins first
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            # SO_REUSEADDR as the real owners set it: a port in TIME_WAIT counts as free, a
            # listening one (of any address) as busy
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("", pinned or 0))
            except OSError as err:
                raise PortError(
                    f"{key}: port {pinned} is already in use on this node ({err.strerror}); "
                    "remove the key so that each job chooses a free port, or pin another one"
                ) from None
            ports[key] = sock.getsockname()[1]
    return ports


def listening_inodes(port: int) -> set[int] | None:
    """Socket inodes listening on `port` that take connections to 127.0.0.1; None without /proc."""
    found: set[int] = set()
    seen = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                rows = lines.read().splitlines()[1:]
        except OSError:
            continue
        seen = True
        for row in rows:
            fields = row.split()
            address, _, hex_port = fields[1].partition(":")
            if fields[3] == _LISTEN and int(hex_port, 16) == port and address in _TAKES_LOOPBACK:
                found.add(int(fields[9]))
    return found if seen else None


def socket_holders(inodes: set[int], pids: Iterable[int]) -> dict[int, set[int]]:
    """inode -> the processes among `pids` with a descriptor on it (readable ones: this user's)."""
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    holders: dict[int, set[int]] = {}
    for pid in pids:
        with suppress(OSError):  # gone, or another user's
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with suppress(OSError):
                    inode = wanted.get(os.readlink(f"/proc/{pid}/fd/{fd}"))
                    if inode is not None:
                        holders.setdefault(inode, set()).add(pid)
    return holders


def foreign_listeners(port: int, tree: set[int]) -> dict[int, set[int]] | None:
    """Listeners on `port` that no process of `tree` holds: inode -> its holders (an empty set:
    a process this user cannot inspect). Empty when `tree` owns every one; None without /proc."""
    inodes = listening_inodes(port)
    if inodes is None:
        return None
    rest = inodes - set(socket_holders(inodes, tree))
    if not rest:
        return {}
    everyone = (int(name) for name in os.listdir("/proc") if name.isdigit())
    holders = socket_holders(rest, everyone)
    return {inode: holders.get(inode, set()) for inode in sorted(rest)}


def describe_processes(pids: Iterable[int]) -> str:
    """`pid 12 (python -m vllm...)`, ...: who holds a port, for an error message."""
    names = []
    for pid in sorted(pids):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                argv = cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            argv = "?"
        names.append(f"pid {pid} ({argv[:80]})")
    return ", ".join(names) or "a process this user cannot inspect"


class PortWatch:
    """Whether every listener on a server's port belongs to the server's process tree (Linux).

    `problem()` returns None or the error, `hint` appended; after a clean look it rereads only
    the port's socket inodes (cheap), and attributes them to processes again only when a new
    one appears.
    """

    def __init__(self, server_pid: int, host: str, port: int, hint: str) -> None:
        self.server_pid, self.host, self.port, self.hint = server_pid, host, port, hint
        self.known: set[int] | None = None

    def problem(self) -> str | None:
        inodes = listening_inodes(self.port)
        if inodes is None or (self.known is not None and inodes <= self.known):
            return None  # cannot tell (no /proc), or nothing new since the last look
        tree = {self.server_pid} | descendants(self.server_pid)
        foreign = foreign_listeners(self.port, tree) or {}
        where = f"{self.host}:{self.port}"
        if not inodes:
            return f"no socket listens on {where} although /health answered"
        if not foreign:
            self.known = inodes
            return None
        holders = describe_processes(set().union(*foreign.values()))
        ours = f"this job's vLLM server (pid {self.server_pid})"
        if set(foreign) == inodes:
            return f"{where} is served by {holders}, not by {ours}; {self.hint}"
        return (
            f"{holders} also listen(s) on {where}, beside {ours}: with SO_REUSEPORT the kernel "
            f"would send some of the trainer's requests there; {self.hint}"
        )
