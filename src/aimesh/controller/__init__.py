"""The rollout controller: judges running canaries by the gateways' live figures, one
process at a time (:mod:`aimesh.controller.controller`)."""

from aimesh.controller.controller import LEASE_KEY, Controller, controller_probe

__all__ = ["LEASE_KEY", "Controller", "controller_probe"]
