"""The gateway's OpenAPI document, fuzzed: schemathesis generates requests for every operation (valid and invalid)
against a platform whose every service wants the token. With it, any server error (5xx) or any answer whose body the
document does not describe fails; without it, every answer but the open routes' must be 401. The platform runs on
a throwaway home."""

from __future__ import annotations

import pytest
import schemathesis
import torch
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from ai_platform.sdk.models import save_model
from mnist.model import MnistCNN
from tests.conftest import start_platform
from tests.task_scripts import write_scripts

TOKEN = "fuzz-t0ken"
EXAMPLES = 30  # per operation and phase


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    project = tmp_path_factory.mktemp("fuzz")
    write_scripts(project / "scripts")
    torch.manual_seed(0)
    save_model(MnistCNN().eval(), str(project / ".ai_platform/models/cnn.lance"), torch.zeros(1, 1, 28, 28),
               labels=list(range(10)))
    running = start_platform(project, token=TOKEN)
    yield running
    running.stop()


def operations(url: str, headers: dict[str, str]) -> list:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", headers=headers)
    return [result.ok() for result in schema.get_all_operations()]


def fuzz(operation, headers: dict[str, str], examples: int, checks: list) -> list[str]:
    """Run ``examples`` generated requests against one operation; the failures, one line each."""
    failures: list[str] = []

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              derandomize=True, phases=[Phase.explicit, Phase.generate])
    @given(case=operation.as_strategy())
    def run(case) -> None:  # noqa: ANN001 - a schemathesis Case
        try:
            case.call_and_validate(headers=headers, checks=checks)
        except Exception as exc:  # noqa: BLE001 - a failed check (or a group of them): recorded, all are shown
            failures.append(f"{operation.label}: {case.method} {case.formatted_path}: "
                            f"{' | '.join(str(exc).split(chr(10))[:3])[:300]}")

    run()
    return failures


def test_no_request_makes_the_gateway_fail_or_answer_off_the_document(platform):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    found = operations(platform.url, auth)
    assert len(found) > 30, "every route of the API is in the document"
    failures = [f for operation in found for f in fuzz(operation, auth, EXAMPLES,
                                                      [not_a_server_error, response_schema_conformance])]
    assert failures == []
    print(f"\nfuzzed {len(found)} operations with {EXAMPLES} examples each: no failure")


OPEN_ROUTES = {"GET /healthz", "GET /metrics"}  # and the page's files and the API's documents, not operations


def refused_without_a_token(ctx, response, case) -> None:  # noqa: ANN001 - schemathesis' check signature
    """A check: every operation but the open ones answers 401 with the platform's error body."""
    if f"{case.method.upper()} {case.operation.path}" in OPEN_ROUTES:
        return
    body = response.json() if response.status_code == 401 else None
    if response.status_code != 401 or body["error"]["code"] != "UNAUTHORIZED" if not case.operation.path.startswith(
            "/v2") else not isinstance(body, dict) or not isinstance(body.get("error"), str):
        raise AssertionError(f"answered {response.status_code} without the token: {response.text[:200]}")


def test_without_the_token_every_route_but_the_open_ones_is_401(platform):
    found = operations(platform.url, {"Authorization": f"Bearer {TOKEN}"})
    failures = [f for operation in found for f in fuzz(operation, {}, 5, [not_a_server_error,
                                                                         refused_without_a_token])]
    assert failures == []
