"""The rules of the names every service shares: models, aliases, version references.

One place for each rule, so that the registry that stores a name, the gateway that routes
by it and every OpenAPI document that describes it (as a ``pattern``) agree. The patterns
are anchored and use only what Python and ECMA-262 (JSON Schema's dialect) read alike;
check a name with ``fullmatch``, so that a trailing newline is no part of a name.
"""

from __future__ import annotations

import re

__all__ = ["ALIAS_NAME", "MODEL_NAME", "VERSION_REF"]

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
"""A model name: 1-128 letters, digits, ``-`` or ``_``, starting with a letter or digit."""
ALIAS_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
"""An alias: 1-64 letters, digits, ``-`` or ``_``, starting with a letter (not ``latest``)."""
VERSION_REF = re.compile(r"^(?:[0-9]{1,18}|[A-Za-z][A-Za-z0-9_-]{0,63})$")
"""A version number, an alias, or ``latest``."""
