"""How the server is put together, without a model: the routers are mounted, the generator and the scheduler live in
app.state, and a request that sets nothing decodes with GenerationSettings' defaults, as `generate` does.

    pytest tests/test_serve_app.py
"""

from dataclasses import replace

import pytest

pytest.importorskip("httpx")  # TestClient drives the app through httpx
from fastapi.testclient import TestClient  # noqa: E402

from writemypaper.settings import GenerationSettings  # noqa: E402
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


# ---------------------------------------------------------------------------------------------------------------------
# what a request may hold: parameters we do not honour, text that is not text, greedy n > 1, stop strings


def post(app, path, body: str | dict):
    client = TestClient(app)
    if isinstance(body, dict):
        return client.post(path, json=body)
    return client.post(path, content=body.encode(), headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("body, param", [
    ('{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages.0.content"),
    ('{"messages": [{"role": "user", "content": [{"type": "text", "text": "요약\\udfff"}]}]}', "messages.0.content"),
    ('{"messages": [{"role": "user", "content": "요약"}], "model": "\\ud800"}', "model"),
    ('{"messages": [{"role": "user", "content": "요약"}], "stop": ["\\ud800"]}', "stop"),
])
def test_a_lone_surrogate_is_a_400(app, body, param):
    """JSON allows "\\ud800", UTF-8 does not: it used to reach the tokenizer and come back as a 500 TypeError."""
    r = post(app, "/v1/chat/completions", body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    r = post(app, "/v1/writemypaper/check", '{"summary": "요약", "text": "\\ud800"}')
    assert r.status_code == 400 and r.json()["error"]["param"] == "text", r.text


@pytest.mark.parametrize("field, value", [("user", "u1"), ("logit_bias", {"5": 100}), ("response_format", {}),
                                          ("tools", []), ("top_logprobs", 2), ("stream_options", {"x": 1})])
def test_a_parameter_the_server_does_not_honour_is_refused(app, field, value):
    r = post(app, "/v1/chat/completions", {"messages": MESSAGES, field: value})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "unsupported_parameter" and field in r.json()["error"]["param"]
    r = post(app, "/v1/completions", {"prompt": "요약", "echo": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "echo"
    # A key that is not text is refused without being said back.
    r = post(app, "/v1/chat/completions", '{"messages": [], "\\ud800": 1}')
    assert r.status_code == 400 and r.json()["error"]["param"] is None, r.text


def test_openai_fields_are_accepted_at_their_neutral_values_only():
    from writemypaper.serve.errors import ApiError

    neutral = {"presence_penalty": 0.0, "frequency_penalty": 0, "logprobs": False}
    assert request_settings(ChatRequest(messages=MESSAGES, **neutral), Limits()) == request_settings(
        ChatRequest(messages=MESSAGES), Limits())
    for field, value in (("presence_penalty", 0.5), ("frequency_penalty", -1.0), ("logprobs", True)):
        with pytest.raises(ApiError) as e:
            request_settings(ChatRequest(messages=MESSAGES, **{field: value}), Limits())
        assert e.value.status == 400 and e.value.param == field
    with pytest.raises(ApiError):
        request_settings(CompletionRequest(prompt="요약", logprobs=3), Limits())


def test_greedy_n_over_one_is_a_400():
    """transformers refuses num_return_sequences > 1 without sampling: it used to surface as a 500 ValueError."""
    from writemypaper.serve.errors import ApiError

    with pytest.raises(ApiError) as e:
        request_settings(ChatRequest(messages=MESSAGES, n=2, temperature=0.0), Limits())
    assert e.value.status == 400 and e.value.param == "n" and "temperature" in e.value.message
    assert request_settings(ChatRequest(messages=MESSAGES, n=2, temperature=0.5), Limits()).num_return_sequences == 2


def test_stop_strings_are_checked():
    from writemypaper.serve.errors import ApiError
    from writemypaper.serve.limits import request_stops

    assert request_stops(None) == () and request_stops("\n") == ("\n",) and request_stops(["a", "b"]) == ("a", "b")
    for bad in ([""], ["a"] * 5, "x" * 65):
        with pytest.raises(ApiError) as e:
            request_stops(bad)
        assert e.value.status == 400 and e.value.param == "stop"


def test_stop_cuts_the_text_at_the_first_stop_string():
    from writemypaper.serve.stops import StopScanner, cut_at_stop

    assert cut_at_stop("연구 결과. 다음 문장", ("결과", "다음")) == ("연구 ", True)
    assert cut_at_stop("연구 결과", ("없음",)) == ("연구 결과", False)
    assert cut_at_stop("연구 결과", ()) == ("연구 결과", False)
    # Streamed: a stop split over pieces is never sent in part, and nothing after it is sent.
    text = "  본 연구는 설문을 ##끝## 이후 문장"
    for size in (1, 2, 3, 5, 40):
        scan = StopScanner(("##끝##", "없는 문자열"))
        sent = [scan.feed(text[i:i + size]) for i in range(0, len(text), size)]
        assert "".join(sent) + scan.flush() == "본 연구는 설문을 " and scan.stopped, size
    # Without a stop: everything, leading whitespace dropped, nothing held back at the end.
    scan = StopScanner(("없음",))
    sent = "".join(scan.feed(p) for p in [" ", " 본", " 연구는", " 없"]) + scan.flush()
    assert sent == "본 연구는 없" and not scan.stopped


# ---------------------------------------------------------------------------------------------------------------------
# without the fact check; what the page learns from /health; who may frame the page


def test_without_the_fact_check_its_routes_and_ranking_are_refused():
    app = create_app(NoModel(), model_name="m", fact_check=False)
    r = post(app, "/v1/writemypaper/check", {"summary": "요약", "text": "초록"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "fact_check_off"
    r = post(app, "/v1/chat/completions", {"messages": MESSAGES, "candidates": 2, "temperature": 1.0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "candidates"
    assert TestClient(app).get("/health").json()["fact_check"] is False


def test_health_gives_the_page_the_server_defaults(app):
    """The page's length and temperature start at what a request that sets nothing gets."""
    health = TestClient(app).get("/health").json()
    settings = request_settings(ChatRequest(messages=MESSAGES), app.state.limits)
    assert health["defaults"] == {"max_tokens": settings.max_new_tokens, "temperature": settings.temperature}
    assert health["fact_check"] is True
    low = TestClient(create_app(NoModel(), Limits(max_new_tokens=16))).get("/health").json()
    assert low["defaults"]["max_tokens"] == 16
    # The page holds no length of its own.
    from writemypaper.serve.page import STATIC

    html = (STATIC / "index.html").read_text()
    tag = html[html.index('id="max-tokens"'):]
    assert "value=" not in tag[:tag.index(">")]


def fact_kinds() -> set[str]:
    """Every kind the fact check can emit: the kinds Fact documents, the pattern's term groups, and those it emits
    on a text that holds one fact of each kind."""
    import inspect
    import re

    from writemypaper import factcheck

    documented = set(re.search(r"kind: str\s*#\s*(.*)", inspect.getsource(factcheck.Fact)).group(1).split(" | "))
    terms = set(factcheck._fact_re().groupindex) - {"numeric", "native", "sino"}  # those become number/year/century
    text = "2019년 19세기에 1,200명이 '자유'를 AI로 對句 연구"
    emitted = {f.kind for f in factcheck.extract_facts(text)}
    assert emitted == documented, emitted
    return documented | terms | emitted


def test_every_fact_kind_has_a_label(app):
    labels = TestClient(app).get("/health").json()["fact_kinds"]
    kinds = fact_kinds()
    assert {"century", "number", "year", "hanja"} <= kinds
    assert kinds <= set(labels) and all(labels[k].strip() for k in kinds), kinds - set(labels)


def test_every_reason_a_fact_is_unsupported_has_a_label(app):
    from writemypaper.factcheck import REASONS, unsupported_facts

    labels = TestClient(app).get("/health").json()["fact_reasons"]
    assert set(labels) == set(REASONS) and all(v.strip() for v in labels.values())
    # the check gives each reason: 1.6배 on another noun, then once more than the summary's count plus one, and an
    # absent figure
    facts = unsupported_facts("효과가 1.6배였다.", "효과가 1.6배였다. 비용도 1.6배였다. 시간도 1.6배였다. 3명이었다.")
    assert [f.reason for f in facts] == ["noun", "repeated", "absent"], facts


def test_the_page_may_be_framed_by_colab_only(app):
    csp = TestClient(app).get("/").headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["frame-ancestors"].split() == ["'self'", "https://colab.research.google.com",
                                                     "https://*.googleusercontent.com"]
    # Everything else is as strict as before: the page loads only from this server.
    assert directives["default-src"] == "'self'" and directives["script-src"] == "'self'"


def test_serve_passes_fact_check_from_the_command_line(monkeypatch):
    from writemypaper import serve
    from writemypaper.cli import main

    seen = []
    monkeypatch.setattr(serve, "main", lambda **kw: seen.append(kw["fact_check"]))
    assert main(["serve"]) == 0 and main(["serve", "--no-fact-check"]) == 0 and main(["serve", "--fact-check"]) == 0
    assert seen == [True, False, True]


# ---------------------------------------------------------------------------------------------------------------------
# target_chars: the length journals ask for


@pytest.mark.parametrize("value", [0, -1, 49, 10**9, "300", True, 300.5])
def test_a_bad_target_length_is_a_400(app, value):
    for path, body in (("/v1/chat/completions", {"messages": MESSAGES}), ("/v1/completions", {"prompt": "요약"})):
        r = post(app, path, {**body, "target_chars": value})
        assert r.status_code == 400 and r.json()["error"]["param"] == "target_chars", r.text


def test_a_target_length_past_max_tokens_is_a_400_that_says_so(app):
    r = post(app, "/v1/chat/completions", {"messages": MESSAGES, "target_chars": 1000, "max_tokens": 100})
    assert r.status_code == 400 and r.json()["error"]["param"] == "target_chars", r.text
    assert "cannot fit in max_new_tokens=100" in r.json()["error"]["message"]


def test_a_target_length_reaches_the_settings():
    limits = Limits()
    assert request_settings(ChatRequest(messages=MESSAGES, target_chars=500), limits).target_chars == 500
    assert request_settings(CompletionRequest(prompt="요약"), limits).target_chars is None


def test_the_page_asks_for_a_target_length_and_sends_it(app):
    """An input for the target in characters, empty by default (no target), sent as target_chars when filled."""
    client = TestClient(app)
    html = client.get("/").text
    tag = html[html.index('id="target-chars"'):]
    tag = tag[:tag.index(">")]
    assert 'type="number"' in tag and 'min="50"' in tag and 'max="5000"' in tag and "value=" not in tag
    js = client.get("/static/app.js").text
    assert 'request.target_chars = Number($("target-chars").value)' in js and "check.chars" in js
