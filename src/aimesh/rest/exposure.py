"""Whether a service may listen where it is told to: loopback always, elsewhere only with keys.

A service bound to a non-loopback address (``0.0.0.0``, a LAN address, a host name) while no
API key exists would answer anyone on the network as the local operator. It refuses to start
(:class:`~aimesh.errors.InsecureBind`) unless the operator accepts the exposure
(``--insecure``, or ``auth.insecure: true`` for ``aimesh up``), and then it warns at every
start. Every serving command calls :func:`check_bind` once, before it binds.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable

from aimesh.config import Settings
from aimesh.errors import InsecureBind

__all__ = ["auth_configured", "check_bind", "is_loopback"]

log = logging.getLogger("aimesh.rest")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` exposes nothing beyond this machine (``localhost``, 127/8, ::1)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name may resolve anywhere; "" binds every interface


def auth_configured(settings: Settings) -> bool:
    """Whether any API key exists, so that a service bound beyond loopback checks callers.

    Here: the static keys of ``auth.keys``. Keys stored in the registry (``aimesh keys
    create``) are known to :class:`aimesh.registry.KeyWatch` (``keyring.enabled``), which
    this plumbing floor cannot import; callers above it may check that too.
    """
    return bool(settings.auth.keys)


def check_bind(
    settings: Settings,
    host: str,
    service: str,
    *,
    insecure: bool = False,
    stored_keys: Callable[[], bool] | None = None,
) -> str | None:
    """Refuse to bind ``host`` beyond loopback without keys, unless told ``insecure``.

    ``stored_keys`` answers whether the key store holds any key (asked only for a bind
    beyond loopback without static keys). Returns the warning to show when the exposure was
    accepted (also logged), else None.
    """
    if is_loopback(host) or auth_configured(settings):
        return None
    if stored_keys is not None and stored_keys():
        return None
    if not (insecure or settings.auth.insecure):
        raise InsecureBind(host, service)
    warning = (
        f"{service} binds {host} with no API key: anyone who can reach it may use it "
        "(accepted with --insecure / auth.insecure)"
    )
    log.warning(warning)
    return warning
