"""Who may change the daemon's state: the peer's credentials and the admin group.

Inference and read-only endpoints are open to anyone who can connect (the socket's mode and group
decide that). State-changing admin endpoints (``/v2/admin/...``) are allowed only to root or to a
member of ``server.admin_group``, judged from the credentials the kernel attached to the unix
socket connection (``SO_PEERCRED``: pid, uid, gid at ``connect()``), never from anything the client
says. A TCP peer has no such credentials: it is refused unless ``server.admin_over_tcp`` is set.

The user database lookup (uid, gid to user name and groups) is injectable, so tests that run as root
can check the refusal path with a lookup that maps the peer to an ordinary user.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_UCRED = struct.Struct("3i")


@dataclass(frozen=True)
class Peer:
    """The other end of a connection, as the kernel reports it."""

    transport: str
    """``unix`` or ``tcp`` (or ``unknown`` when the socket cannot be inspected)."""
    pid: int = -1
    uid: int = -1
    gid: int = -1

    def describe(self) -> str:
        if self.transport == "unix":
            return f"pid {self.pid}, uid {self.uid}, gid {self.gid}"
        return f"a {self.transport} peer"


@dataclass(frozen=True)
class Identity:
    """A user as the user database knows it."""

    uid: int
    name: str
    groups: frozenset[str]
    """Names of the primary and supplementary groups (a gid without a name appears as digits)."""


IdentityLookup = Callable[[int, int], Identity]
"""``(uid, gid) -> Identity``: how a peer's uid and primary gid map to a user and its groups."""


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def system_identity(uid: int, gid: int) -> Identity:
    """The user database's answer (``/etc/passwd``, ``/etc/group`` or NSS)."""
    gids = {gid}
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid without a passwd entry (containers): only its primary group counts
        name = str(uid)
    else:
        with contextlib.suppress(OSError):
            gids.update(os.getgrouplist(name, gid))
    return Identity(uid=uid, name=name, groups=frozenset(_group_name(g) for g in gids))


def peer_of(sock: Any) -> Peer:
    """The peer of an accepted socket (``transport.get_extra_info("socket")``)."""
    if sock is None:
        return Peer("unknown")
    family = getattr(sock, "family", None)
    if family == socket.AF_UNIX and hasattr(socket, "SO_PEERCRED"):
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        except OSError:
            return Peer("unknown")
        pid, uid, gid = _UCRED.unpack(raw)
        return Peer("unix", pid, uid, gid)
    if family in (socket.AF_INET, socket.AF_INET6):
        return Peer("tcp")
    return Peer("unknown")


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str
    who: str


class AdminGate:
    """Decides whether a peer may call the admin endpoints."""

    def __init__(self, admin_group: str = "", allow_tcp: bool = False,
                 lookup: IdentityLookup = system_identity) -> None:
        self.admin_group = admin_group
        self.allow_tcp = allow_tcp
        self.lookup = lookup

    def _who_may(self) -> str:
        if self.admin_group:
            return f"root or members of group {self.admin_group!r} (server.admin_group)"
        return "root (set server.admin_group to admit a group)"

    def check(self, peer: Peer) -> Verdict:
        if peer.transport == "tcp":
            if self.allow_tcp:
                return Verdict(True, "TCP admin allowed by server.admin_over_tcp", "tcp peer")
            return Verdict(False, "admin endpoints are refused over TCP: a TCP peer carries no "
                           "credentials; use the unix socket (or set server.admin_over_tcp)",
                           "tcp peer")
        if peer.transport != "unix":
            return Verdict(False, "admin endpoints need a unix socket peer whose credentials "
                           "can be read (SO_PEERCRED)", "unknown peer")
        try:
            ident = self.lookup(peer.uid, peer.gid)
        except Exception as exc:  # an injected or NSS lookup failing must not open the door
            return Verdict(False, f"cannot look up the peer's user ({exc}); refusing",
                           peer.describe())
        who = f"user {ident.name!r} ({peer.describe()})"
        if ident.uid == 0:
            return Verdict(True, "root", who)
        if self.admin_group and self.admin_group in ident.groups:
            return Verdict(True, f"member of {self.admin_group!r}", who)
        return Verdict(False, f"forbidden: {who} may not change the daemon's state; admin "
                       f"endpoints are allowed to {self._who_may()}", who)


__all__ = ["AdminGate", "Identity", "IdentityLookup", "Peer", "Verdict", "peer_of",
           "system_identity"]
