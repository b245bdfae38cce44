"""The server against its own OpenAPI schema: schemathesis writes requests from app.openapi() (valid ones and broken
ones), the embedded model answers them in a couple of tokens, and every answer must be a non-5xx that the schema
documents, in a body the schema describes. The run is bounded (EXAMPLES per operation, about 230 requests, under a
minute here) and derandomized.

    pytest tests/test_serve_fuzz.py -s        # prints how many requests it tried, by route and status
"""

from collections import Counter

import pytest

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance  # noqa: E402

from writemypaper import engines  # noqa: E402
from writemypaper.serve import Limits, create_app, serving  # noqa: E402

MODEL = "gemma3-270m"
# Tiny outputs and small batches: a request the model answers costs a second or so on 2 CPU cores.
LIMITS = Limits(max_input_chars=200, max_new_tokens=2, min_temperature=0.0, max_temperature=1.5, queue_depth=8,
                max_batch_size=2)
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance]
# Examples per operation and mode; a route without parameters has one. Random messages rarely hold a user turn
# with text, so a third pass puts a real summary into the body and fuzzes the sampling fields around it.
SUMMARY = "본 연구는 한ㆍ중ㆍ일 대학생 1,200명의 정치 태도를 2019년 설문으로 비교하였다."
WITH_SUMMARY = "positive, with a summary"
EXAMPLES = {GenerationMode.POSITIVE: 40, GenerationMode.NEGATIVE: 20, WITH_SUMMARY: 25}
BOUNDS = (100, 300)  # requests in all, shrinking included


@pytest.fixture(scope="module")
def served():
    app = create_app(engines.load(MODEL), LIMITS, model_name=MODEL)
    with serving(app) as url:
        yield app, url


def with_summary(case):
    if "messages" in case.body:
        case.body["messages"] = [{"role": "user", "content": SUMMARY}]
    else:
        case.body["prompt"] = SUMMARY
    return case


def fuzz(operation, mode, url, tried: Counter) -> None:
    """Up to EXAMPLES[mode] requests to one operation; raises on the first answer that fails a check (shrunk)."""
    from hypothesis import HealthCheck, given, settings

    if mode == WITH_SUMMARY:
        strategy = operation.as_strategy(generation_mode=GenerationMode.POSITIVE).map(with_summary)
    else:
        strategy = operation.as_strategy(generation_mode=mode)

    @given(case=strategy)
    @settings(max_examples=EXAMPLES[mode], deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def run(case):
        response = case.call(base_url=url, timeout=120)
        tried[(case.method, case.path, response.status_code)] += 1
        case.validate_response(response, checks=CHECKS)

    run()


def test_every_answer_is_documented_and_none_is_a_5xx(served, capsys, record_property):
    app, url = served
    schema = schemathesis.openapi.from_dict(app.openapi())
    tried: Counter = Counter()
    failures = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /v1/chat/completions", "POST /v1/completions", "POST /v1/writemypaper/check", "GET /v1/models"}
    for operation in operations:
        for mode in EXAMPLES:
            if mode != GenerationMode.POSITIVE and not operation.body:
                continue  # a GET here takes no parameters: nothing to send wrong, no summary to put in
            if mode == WITH_SUMMARY and operation.path not in ("/v1/chat/completions", "/v1/completions"):
                continue
            try:
                fuzz(operation, mode, url, tried)
            except Exception as e:  # every operation is fuzzed before the test fails
                failures.append(f"{operation.method.upper()} {operation.path} ({getattr(mode, 'value', mode)}): {e}")
    total = sum(tried.values())
    record_property("requests", total)
    with capsys.disabled():
        print(f"\nschemathesis: {total} requests")
        for (method, path, status), n in sorted(tried.items()):
            print(f"  {method:4} {path:28} {status}: {n}")
    assert not failures, "\n\n".join(failures)
    assert BOUNDS[0] <= total <= BOUNDS[1], total
    # The model did answer: the fuzzing reached generation, not only the validation in front of it.
    assert tried[("POST", "/v1/chat/completions", 200)] and tried[("POST", "/v1/completions", 200)]
