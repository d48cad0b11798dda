"""``aimesh doctor``: what a home exposes, judged from its settings, keys and files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from _services import Home, run_aimesh


def _doctor(home: Home, ok: bool = True, **env: str) -> tuple[int, dict[str, list[dict[str, Any]]]]:
    done = run_aimesh(home.env | env, "doctor", "--json", ok=ok)
    by_area: dict[str, list[dict[str, Any]]] = {}
    for finding in json.loads(done.stdout):
        by_area.setdefault(finding["area"], []).append(finding)
    return done.returncode, by_area


def test_doctor_tells_what_is_exposed_and_how_to_fix_it(
    tmp_path: Path, nats_url: str, fraud_data: tuple[np.ndarray, np.ndarray]
) -> None:
    home = Home.create(tmp_path, nats_url, fraud_data[0])

    code, found = _doctor(home)  # the defaults: loopback, no keys, nothing exposed
    assert code == 0
    assert [f["level"] for f in found["keys"]] == ["note"]
    assert all(f["level"] == "ok" for f in found["bind"] + found["trust"] + found["files"])

    exposed = {
        "AIMESH_GATEWAY__HOST": "0.0.0.0",
        "AIMESH_AUTH__INSECURE": "true",
        "AIMESH_REGISTRY__ALLOW_CODE_ARTIFACTS": "true",
        "AIMESH_AUTH__ALLOWED_ORIGINS": '["*"]',
    }
    code, found = _doctor(home, ok=False, **exposed)
    assert code == 1
    gateway = next(f for f in found["bind"] if f["found"].startswith("gateway"))
    assert gateway["level"] == "exposed" and "aimesh keys create" in gateway["fix"]
    assert [f["level"] for f in found["trust"]] == ["warn"]
    assert any(f["level"] == "warn" and "'*'" in f["found"] for f in found["browser"])

    # A key closes the exposed bind; a secret others may read is named, with its fix.
    run_aimesh(home.env, "keys", "create", "ops", "--scope", "admin")
    service_key = home.settings.home_dir / "secrets" / "service.key"
    service_key.parent.mkdir(exist_ok=True)
    service_key.write_text("amk_copied-by-hand")  # as an operator might, readable by all
    service_key.chmod(0o644)
    code, found = _doctor(home, **exposed)
    assert code == 0
    assert [f["level"] for f in found["keys"]] == ["ok"]
    assert all(f["level"] == "ok" for f in found["bind"] if "binds" in f["found"])
    assert [f["fix"] for f in found["files"] if f["level"] == "warn"] == [
        f"chmod 600 {service_key}"
    ]
