"""Who may do what on the control socket, from the peer's credentials (SO_PEERCRED)."""

from __future__ import annotations

import grp
import os
import pwd

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


def who(peer: Peer) -> str:
    """The peer as the events and the log name it: "alice (uid 1000)", or "uid 1234" when it has no name."""
    try:
        return f"{pwd.getpwuid(peer.uid).pw_name} (uid {peer.uid})"
    except (KeyError, OverflowError):
        return f"uid {peer.uid}"
