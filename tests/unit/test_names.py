"""Every checker of a name that reaches a store refuses every name that looks like a path."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from _bad_paths import BAD_NAMES
from aimesh.auth.keys import check_key_name
from aimesh.errors import InvalidRequest
from aimesh.gateway.routing import MODEL_NAME, VERSION_REF
from aimesh.jobs.types import check_job_id, check_kind
from aimesh.lake.refs import DatasetRef, check_dataset_name
from aimesh.registry.types import check_alias_name, check_model_name, check_sha256

CHECKERS: dict[str, Callable[[str], object]] = {
    "model": check_model_name,
    "alias": check_alias_name,
    "sha256": check_sha256,
    "dataset": check_dataset_name,
    "dataset reference": DatasetRef.parse,
    "key": check_key_name,
    "job kind": check_kind,
    "job id": check_job_id,
}


@pytest.mark.parametrize("checker", CHECKERS)
@pytest.mark.parametrize("bad", BAD_NAMES)
def test_each_checker_refuses_a_path(checker: str, bad: str) -> None:
    if (checker, bad) == ("dataset reference", "x\n"):
        assert DatasetRef.parse(bad) == DatasetRef("x")  # stripped, as typed at a prompt
        return
    with pytest.raises(InvalidRequest):
        CHECKERS[checker](bad)


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_the_gateway_routes_no_path_as_a_model_or_version(bad: str) -> None:
    assert MODEL_NAME.fullmatch(bad) is None
    assert VERSION_REF.fullmatch(bad) is None


@pytest.mark.parametrize("good", ["fraud", "Fraud-2", "a_b", "1model"])
def test_plain_names_pass(good: str) -> None:
    assert check_model_name(good) == good
    assert MODEL_NAME.fullmatch(good)
