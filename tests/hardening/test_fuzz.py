"""Schemathesis against the running API's own OpenAPI schema: every operation,
with data that fits the schema (positive) and data that does not (negative),
a bounded number of examples each. No answer may be a 5xx, and every error
(4xx) must be a JSON body with an ``error`` object.

It runs with API keys configured and the key sent, so that requests get past
the guard into the routes. ``TOKENFAN_FUZZ_EXAMPLES`` sets the examples per
operation and mode (default 20; the long variant 200)."""

from __future__ import annotations

import os
from collections import Counter

import pytest
import schemathesis
from harness import record
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from api import auth
from hardening.conftest import scale

pytestmark = pytest.mark.e2e

KEY = "tf-fuzz-key-0123456789"
EXAMPLES = int(os.environ.get("TOKENFAN_FUZZ_EXAMPLES", scale(20, 200)))


@pytest.fixture(scope="module")
def cluster(module_clusters):
    return module_clusters(
        env={
            "TOKENFAN_API_KEYS": auth.hash_key(KEY),
            "TOKENFAN_SIM_TTFT_MS": "1",
            "TOKENFAN_SIM_TOKENS_PER_S": "5000",
            "TOKENFAN_DEFAULT_MAX_TOKENS": "16",
            "TOKENFAN_MAX_TOKENS_LIMIT": "64",
            "TOKENFAN_JOB_TIMEOUT_S": "20",
            "TOKENFAN_RATE_LIMIT_PER_S": "0",
        },
    )


def test_fuzz_the_openapi_schema(cluster):
    auth_header = {"authorization": f"Bearer {KEY}"}
    schema = schemathesis.openapi.from_url(f"{cluster.api.url}/openapi.json", headers=auth_header, timeout=10)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8, [(op.method, op.path) for op in operations]
    statuses: Counter[int] = Counter()
    failures: list[str] = []

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,  # the same cases on every run: a failure reproduces
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case):
                response = case.call(base_url=cluster.api.url, headers=auth_header, timeout=30)
                statuses[response.status_code] += 1
                where = f"{case.method} {case.formatted_path} ({mode.value})"  # noqa: B023 (run at once)
                if response.status_code >= 500:
                    failures.append(f"{where}: {response.status_code} {response.text[:300]}")
                elif response.status_code >= 400:
                    try:
                        error = response.json()["error"]
                        assert isinstance(error, dict) and error.get("code") and error.get("message")
                    except Exception:  # noqa: BLE001
                        failures.append(f"{where}: {response.status_code} without a JSON error: {response.text[:300]}")

            try:
                run()
            except Unsatisfiable:
                pass  # nothing in this operation can be made invalid (no parameters, or only free-form strings)

    total = sum(statuses.values())
    fivexx = sum(n for code, n in statuses.items() if code >= 500)
    record(
        f"fuzz: {total} requests over {len(operations)} operations, status codes {dict(sorted(statuses.items()))}, "
        f"5xx: {fivexx}"
    )
    assert not failures, "\n".join(failures[:20])
    assert fivexx == 0
    assert statuses[202] > 0, "no valid chat was ever created: the positive phase did not reach the routes"
    assert cluster.api.alive()
    assert "Exception in ASGI application" not in cluster.api.log_text()
