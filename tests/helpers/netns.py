"""Hosts of their own on this machine: Linux network namespaces joined by a bridge, as
separate machines on one switch. Each host has its own network stack (its loopback
included) and one address in a private /24 chosen at random; the bridge lives in a
namespace of its own, so nothing is added to this machine's network. Files are shared, as
on a cluster's shared file system, except /tmp/ray: each host has its own, as a machine's
/tmp is local (Ray keeps its node's sockets, sessions and logs there, at the path the head
uses: with one shared, every node's log monitor would read every node's worker logs).
`ip netns exec` gives each host an /etc/hosts in which the machine's host name resolves to
that host's address (`hostname --ip-address`, gloo's default interface).

A command runs on a host through the host's `run` script (Host.command), which the
stand-in `srun` execs as well (SRUN_STANDIN_HOSTS).

Root only: `refused()` says why namespaces cannot be made here (tests skip with it).
Everything namespace_hosts made (processes on the hosts, links, namespaces, their
/etc/netns files and temporary directories) is removed on the way out, also when the test
fails."""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

NETNS_ETC = Path("/etc/netns")
RAY_TMP = Path("/tmp/ray")


@dataclass(frozen=True)
class Host:
    name: str  # as the job knows it (node1)
    namespace: str
    address: str
    tmp: Path  # its own /tmp/ray is tmp/ray; its `run` script is here

    @property
    def run(self) -> Path:
        """`run COMMAND...` runs COMMAND on this host."""
        return self.tmp / "run"

    def command(self, *argv: str) -> list[str]:
        """`argv` run on this host."""
        return [str(self.run), *argv]

    def pids(self) -> list[int]:
        found = subprocess.run(
            ["ip", "netns", "pids", self.namespace], capture_output=True, text=True
        )
        return [int(pid) for pid in found.stdout.split()]

    def runs(self, text: str) -> bool:
        """Whether a process on the host has `text` in its command line."""
        for pid in self.pids():
            with contextlib.suppress(OSError):
                if text in Path(f"/proc/{pid}/cmdline").read_text():
                    return True
        return False

    def link(self, up: bool) -> None:
        """Its link to the switch up, or down (the host cut off from the network)."""
        _ip("-n", self.namespace, "link", "set", "eth0", "up" if up else "down")

    def kill_all(self) -> None:
        """SIGKILL to every process on the host, as when a machine dies."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop_all(self, timeout_s: float = 10) -> None:
        """Every process on the host killed, and gone (or `timeout_s` passed)."""
        deadline = time.monotonic() + timeout_s
        while self.pids() and time.monotonic() < deadline:
            self.kill_all()
            time.sleep(0.2)


def _ip(*argv: str) -> None:
    result = subprocess.run(["ip", *argv], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(argv)}: {result.stderr.strip()}")


def refused() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"ift-probe-{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"network namespaces are refused here: {made.stderr.strip()} (root needed)"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@contextlib.contextmanager
def namespace_hosts(names: list[str]) -> Iterator[list[Host]]:
    """Hosts `names` (node1, node2, ...) on one switch, up and reachable from each other.
    (Callers ask `refused()` first: here a refusal is `ip`'s error.)"""
    tag = secrets.token_hex(2)
    subnet = f"10.{random.randrange(64, 250)}.{random.randrange(1, 250)}"
    switch = f"ift{tag}-switch"
    hosts = [
        Host(name, f"ift{tag}-{name}", f"{subnet}.{i + 1}", Path(f"/tmp/ift{tag}-{name}"))
        for i, name in enumerate(names)
    ]
    made: list[str] = []
    try:
        _ip("netns", "add", switch)
        made.append(switch)
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        for i, host in enumerate(hosts):
            _add_host(host, switch, f"port{i}", made)
        yield hosts  # a bridge without STP forwards at once: no wait
    finally:
        for host in hosts:
            host.stop_all()
        for namespace in made:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
            shutil.rmtree(NETNS_ETC / namespace, ignore_errors=True)
        for host in hosts:
            shutil.rmtree(host.tmp, ignore_errors=True)


def _add_host(host: Host, switch: str, port: str, made: list[str]) -> None:
    _ip("netns", "add", host.namespace)
    made.append(host.namespace)
    host.tmp.mkdir()
    (host.tmp / "ray").mkdir()
    RAY_TMP.mkdir(exist_ok=True)  # the mount point
    # `ip netns exec` runs the command in a mount namespace of its own (a slave of this
    # one): the host's /tmp/ray is bound over the shared one there, and only there.
    bind = f'mount --bind {host.tmp / "ray"} {RAY_TMP} && exec "$@"'
    host.run.write_text(
        f"#!/bin/sh\nexec ip netns exec {host.namespace} sh -c '{bind}' run \"$@\"\n"
    )
    host.run.chmod(0o755)
    (NETNS_ETC / host.namespace).mkdir(parents=True, exist_ok=True)
    (NETNS_ETC / host.namespace / "hosts").write_text(
        f"127.0.0.1 localhost\n{host.address} {socket.gethostname()} {host.name}\n"
    )
    _ip("link", "add", "eth0", "netns", host.namespace, "type", "veth",
        "peer", "name", port, "netns", switch)  # fmt: skip
    _ip("-n", switch, "link", "set", port, "master", "br0", "up")
    _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
    _ip("-n", host.namespace, "link", "set", "eth0", "up")
    _ip("-n", host.namespace, "link", "set", "lo", "up")
