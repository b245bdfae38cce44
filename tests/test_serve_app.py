"""How the server is put together, without a model: the routers are mounted, the generator and the scheduler live in
app.state, and a request that sets nothing decodes with GenerationSettings' defaults, as `generate` does.

    pytest tests/test_serve_app.py
"""

from dataclasses import replace

import pytest

pytest.importorskip("httpx")  # TestClient drives the app through httpx
from fastapi.testclient import TestClient  # noqa: E402

from writemypaper.generate import GenerationSettings  # noqa: E402
from writemypaper.serve import Limits, create_app  # noqa: E402
from writemypaper.serve.limits import request_settings  # noqa: E402
from writemypaper.serve.schemas import ChatRequest, CompletionRequest  # noqa: E402

MESSAGES = [{"role": "user", "content": "요약"}]


class NoModel:
    """Enough of a Generator to build the app; no route here reaches it."""

    tokenizer = None


@pytest.fixture
def app():
    return create_app(NoModel(), Limits(queue_depth=3), model_name="m")


def test_state_holds_the_generator_scheduler_and_limits(app):
    assert isinstance(app.state.generator, NoModel)
    assert app.state.scheduler.generator is app.state.generator
    assert app.state.limits == Limits(queue_depth=3) and app.state.scheduler.limits is app.state.limits
    assert app.state.model_name == "m" and app.state.api_key_required is False


def test_every_router_is_mounted(app):
    """Each route answers as itself (a missing one would be a 404 "no route"), not through the app's fallback."""
    client = TestClient(app)
    assert client.get("/health").json()["queue"]["depth"] == 3
    assert client.get("/").headers["content-type"].startswith("text/html")
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    assert client.get("/v1/models").json()["data"][0]["id"] == "m"
    # Routes that need a body say what is missing in it: they exist, and they parse.
    for path, param in (("/v1/chat/completions", "messages"), ("/v1/completions", "prompt"),
                        ("/v1/writemypaper/check", "summary")):
        r = client.post(path, json={})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (path, r.text)
    assert client.get("/v1/nothing").status_code == 404


def test_two_apps_keep_their_own_state():
    """The routers are shared module objects; what differs between apps must come from app.state."""
    a, b = (TestClient(create_app(NoModel(), model_name=n)) for n in ("a", "b"))
    assert a.get("/v1/models").json()["data"][0]["id"] == "a"
    assert b.get("/v1/models").json()["data"][0]["id"] == "b"


def test_a_request_that_sets_nothing_decodes_with_the_generation_defaults():
    """One source: the server's defaults are GenerationSettings', except the seed (a request without one is sampled
    afresh, as OpenAI's API does)."""
    expected = replace(GenerationSettings(), seed=None)
    limits = Limits()
    assert request_settings(ChatRequest(messages=MESSAGES), limits) == expected
    assert request_settings(CompletionRequest(prompt="요약"), limits) == expected
    # A lower cap than the default max_new_tokens wins; a temperature range that excludes the default clamps it.
    low = Limits(max_new_tokens=16, min_temperature=0.0, max_temperature=0.5)
    got = request_settings(ChatRequest(messages=MESSAGES), low)
    assert (got.max_new_tokens, got.temperature) == (16, 0.5)


def test_the_server_reuses_the_generation_ranges():
    """top_p, top_k and the penalty are checked by GenerationSettings, with the field the client sent named."""
    from writemypaper.serve.errors import ApiError

    for field, value in (("top_p", 1.5), ("top_k", -1), ("repetition_penalty", 4.0)):
        with pytest.raises(ApiError) as e:
            request_settings(ChatRequest(messages=MESSAGES, **{field: value}), Limits())
        assert e.value.param == field and e.value.message == GenerationSettings(**{field: value}).problems()[0][1]
