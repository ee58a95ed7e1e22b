"""Who may do what on the control socket, and who did it, from the peer's credentials (SO_PEERCRED)."""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

from ratecared.control.server import Peer


def is_admin(peer: Peer, admin_group: str) -> bool:
    """Root, the daemon's own user, or a member (primary or supplementary) of `admin_group`."""
    if peer.uid in (0, os.geteuid()):
        return True
    if not admin_group:
        return False
    try:
        gid = grp.getgrnam(admin_group).gr_gid
    except KeyError:
        return False
    return peer.gid == gid or gid in peer.groups


@dataclass(frozen=True)
class Who:
    """The operator behind an action, as its log line (and its event) names them."""

    uid: int
    # None for a uid that has no passwd entry (a container's, a deleted user's).
    user: str | None

    def __str__(self) -> str:
        return f"{self.user} (uid {self.uid})" if self.user else f"uid {self.uid}"


def who(peer: Peer) -> Who:
    """The peer's uid and its user name."""
    try:
        user: str | None = pwd.getpwuid(peer.uid).pw_name
    except (KeyError, OverflowError):
        user = None
    return Who(peer.uid, user)
