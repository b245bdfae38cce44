"""The server, for real: the embedded model behind uvicorn on a loopback port, driven by the official `openai` client
and by raw HTTP for the requests a client library would refuse to send.

    pytest tests/test_serve.py
"""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

openai = pytest.importorskip("openai")

from writemypaper import engines, prompts  # noqa: E402
from writemypaper.text import char_count  # noqa: E402
from writemypaper.serve import Limits, create_app, serving  # noqa: E402

MODEL = "gemma3-270m"
SUMMARY = "본 연구는 한ㆍ중ㆍ일 대학생 1,200명의 정치 태도를 2019년 설문으로 비교하였다."
LIMITS = Limits(max_input_chars=300, max_new_tokens=48, min_temperature=0.0, max_temperature=1.5, queue_depth=16,
                max_batch_size=8)

# The client's sentinel that leaves a header out: `openai.omit` in new releases, an `Omit()` before (1.55, our floor).
try:
    from openai import omit as OMIT
except ImportError:  # pragma: no cover - depends on the installed client
    from openai._types import Omit

    OMIT = Omit()


@pytest.fixture(scope="session")
def generator():
    return engines.load(MODEL)


@pytest.fixture(scope="module")
def url(generator):
    with serving(create_app(generator, LIMITS, model_name=MODEL)) as base:
        yield base


@pytest.fixture
def client(url):
    # No retries: a 429 or a 5xx must show up as what it is.
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=300)


def chat(client, **kw):
    kw = {"model": MODEL, "messages": [{"role": "user", "content": SUMMARY}], "max_tokens": 8} | kw
    return client.chat.completions.create(**kw)


def health(url) -> dict:
    return httpx.get(f"{url}/health").json()


def wait_until(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def assert_openai_error(response: httpx.Response, status: int, param=None, code=None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param, body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


# ---------------------------------------------------------------------------------------------------------------------
# the OpenAI API through the official client


def test_chat_completion(client):
    r = chat(client, messages=[{"role": "system", "content": "무시되는 시스템 문구"}, {"role": "user", "content": SUMMARY}])
    assert r.object == "chat.completion" and r.model == MODEL and len(r.choices) == 1
    choice = r.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert 0 <= r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 10
    # The fact check rides along as a non-standard field, with offsets into the returned content.
    check = choice.model_extra["writemypaper"]
    assert set(check) == {"unsupported", "n_facts", "unsupported_rate", "coverage", "chars", "target_chars"}
    assert check["chars"] == char_count(choice.message.content) and check["target_chars"] is None
    for fact in check["unsupported"]:
        assert choice.message.content[fact["start"]:fact["end"]] == fact["text"]


def test_chat_completion_streamed(client):
    chunks = list(chat(client, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.model == MODEL for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip(), "the stream carried no text"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].choices == [] and 0 < chunks[-1].usage.completion_tokens <= 8


def test_completions_plain_and_streamed(client):
    r = client.completions.create(model=MODEL, prompt=SUMMARY, max_tokens=8, temperature=0)
    assert r.object == "text_completion" and isinstance(r.choices[0].text, str)
    assert "writemypaper" in r.choices[0].model_extra
    pieces = [c.choices[0].text for c in client.completions.create(model=MODEL, prompt=SUMMARY, max_tokens=8,
                                                                   temperature=0, stream=True)]
    assert "".join(pieces).strip()
    # Greedy decoding writes the same abstract whether it streams or not.
    assert "".join(pieces).strip() == r.choices[0].text


def test_models_and_health(client, url):
    assert [m.id for m in client.models.list().data] == [MODEL]
    h = health(url)
    assert h["status"] == "ok" and h["model"] == MODEL and h["limits"]["max_new_tokens"] == LIMITS.max_new_tokens


def test_page_is_served_with_its_assets(url):
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in page.text and httpx.get(f"{url}{asset}").status_code == 200
    assert httpx.get(f"{url}/static/../serve.py").status_code == 404


# ---------------------------------------------------------------------------------------------------------------------
# bad input: a 4xx with an OpenAI-shaped body, never a 500

OK = {"model": MODEL, "messages": [{"role": "user", "content": SUMMARY}], "max_tokens": 4}

BAD = {
    "malformed JSON": ('{"messages": [{"role": "user", "content": "요약', 400, None, "invalid_json"),
    "not an object": ("[1, 2]", 400, None, "invalid_json"),
    "missing messages": ({"model": MODEL}, 400, "messages", "missing_required_parameter"),
    "no user message": (OK | {"messages": [{"role": "system", "content": "x"}]}, 400, "messages", None),
    "empty summary": (OK | {"messages": [{"role": "user", "content": "   "}]}, 400, "messages", None),
    "input over the limit": (OK | {"messages": [{"role": "user", "content": "가" * 301}]}, 400, "messages",
                             "context_length_exceeded"),
    "max_tokens over the limit": (OK | {"max_tokens": 49}, 400, "max_tokens", None),
    "max_tokens zero": (OK | {"max_tokens": 0}, 400, "max_tokens", None),
    "max_completion_tokens over the limit": (OK | {"max_completion_tokens": 1000}, 400, "max_completion_tokens", None),
    "temperature too high": (OK | {"temperature": 1.6}, 400, "temperature", None),
    "temperature negative": (OK | {"temperature": -0.1}, 400, "temperature", None),
    "top_p out of range": (OK | {"top_p": 0}, 400, "top_p", None),
    "max_tokens a string": (OK | {"max_tokens": "8"}, 400, "max_tokens", "invalid_type"),
    "max_tokens a float": (OK | {"max_tokens": 8.5}, 400, "max_tokens", "invalid_type"),
    "temperature a string": (OK | {"temperature": "hot"}, 400, "temperature", "invalid_type"),
    "stream not a bool": (OK | {"stream": "yes"}, 400, "stream", "invalid_type"),
    "messages not a list": (OK | {"messages": "요약"}, 400, "messages", "invalid_type"),
    "content a number": (OK | {"messages": [{"role": "user", "content": 5}]}, 400, "messages.0.content", None),
    "unknown role": (OK | {"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role", None),
    "n with stream": (OK | {"n": 2, "stream": True}, 400, "n", None),
    "seed negative": (OK | {"seed": -1}, 400, "seed", None),
    "candidates zero": (OK | {"candidates": 0}, 400, "candidates", None),
    "candidates over max_batch_size": (OK | {"candidates": 9}, 400, "candidates", None),
    "candidates a string": (OK | {"candidates": "2"}, 400, "candidates", "invalid_type"),
    "candidates with stream": (OK | {"candidates": 2, "stream": True}, 400, "candidates", None),
    "candidates with greedy": (OK | {"candidates": 2, "temperature": 0}, 400, "candidates", None),
    "n over candidates": (OK | {"candidates": 2, "n": 3}, 400, "n", None),
    "grounded a string": (OK | {"grounded": "yes"}, 400, "grounded", "invalid_type"),
    "unknown model": (OK | {"model": "gpt-4o"}, 404, "model", "model_not_found"),
    "temperature too small to sample": (OK | {"temperature": 2.2250738585072014e-308}, 400, "temperature", None),
    "n over 1 with greedy": (OK | {"n": 2, "temperature": 0}, 400, "n", None),
    "lone surrogate": ('{"messages": [{"role": "user", "content": "\\ud800"}], "max_tokens": 4}', 400,
                       "messages.0.content", None),
    "unsupported parameter": (OK | {"logit_bias": {"1": 5}}, 400, "logit_bias", "unsupported_parameter"),
    "presence_penalty not 0": (OK | {"presence_penalty": 0.5}, 400, "presence_penalty", "unsupported_parameter"),
    "stop empty": (OK | {"stop": [""]}, 400, "stop", None),
    "stop five strings": (OK | {"stop": list("abcde")}, 400, "stop", None),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_chat_request(url, case):
    body, status, param, code = BAD[case]
    content = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
    r = httpx.post(f"{url}/v1/chat/completions", content=content.encode(), headers={"Content-Type": "application/json"})
    assert_openai_error(r, status, param, code)


@pytest.mark.parametrize("body, param", [
    ({"prompt": 5}, "prompt"),
    ({"prompt": ["가" * 301]}, "prompt"),
    ({"prompt": [SUMMARY] * 9}, "prompt"),
    ({"prompt": [SUMMARY, SUMMARY], "stream": True}, "prompt"),
    ({"prompt": SUMMARY, "max_tokens": 100}, "max_tokens"),
])
def test_bad_completion_request(url, body, param):
    assert_openai_error(httpx.post(f"{url}/v1/completions", json=body), 400, param)


def test_other_http_errors_are_openai_shaped(url):
    assert_openai_error(httpx.get(f"{url}/v1/nothing-here"), 404)
    assert_openai_error(httpx.delete(f"{url}/v1/chat/completions"), 405)
    assert_openai_error(httpx.post(f"{url}/v1/chat/completions", content=b"x" * 10_000_000), 413)
    assert_openai_error(httpx.post(f"{url}/v1/chat/completions", content=SUMMARY.encode(),
                                   headers={"Content-Type": "text/plain"}), 400)
    assert_openai_error(httpx.post(f"{url}/v1/writemypaper/check", json={"summary": SUMMARY}), 400, "text")


def test_the_client_library_sees_openai_errors(client):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, max_tokens=10_000)
    assert e.value.status_code == 400 and e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError):
        chat(client, model="no-such-model")


def stop_inside(text: str) -> str:
    """A stop string that occurs in `text` after its first few characters."""
    at = max(2, len(text) // 2)
    return text[at:at + 2]


def test_stop_ends_the_text_plain_and_streamed(client):
    """Real model, greedy: the text with `stop` is the text without it, cut before the stop string."""
    full = chat(client, max_tokens=16, temperature=0).choices[0].message.content
    assert len(full) >= 4, full
    stop = stop_inside(full)
    r = chat(client, max_tokens=16, temperature=0, stop=[stop, "어디에도 없는 문자열"])
    expected = full[:full.index(stop)].strip()
    assert r.choices[0].message.content == expected and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < 16
    chunks = list(chat(client, max_tokens=16, temperature=0, stop=stop, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed.strip() == expected and stop not in streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    # The completions route too.
    r = client.completions.create(model=MODEL, prompt=SUMMARY, max_tokens=16, temperature=0, stop=stop)
    assert r.choices[0].text == expected and r.choices[0].finish_reason == "stop"


def test_no_fact_check_never_loads_kiwi(generator, monkeypatch):
    """serve --no-fact-check: answers carry no fact check, and nothing imports kiwipiepy or loads Kiwi's model (an
    88 MB package the GPU machine cannot hold)."""
    import sys

    from writemypaper import morphemes

    loads, real = [], morphemes._kiwi

    def kiwi():
        loads.append(1)
        return real()

    monkeypatch.setattr(morphemes, "_kiwi", kiwi)
    with monkeypatch.context() as blocked:
        blocked.setattr(morphemes, "_kiwi_instance", None)
        blocked.setitem(sys.modules, "kiwipiepy", None)  # an import now fails
        with serving(create_app(generator, LIMITS, model_name=MODEL, fact_check=False)) as base:
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=300)
            r = chat(client)
            assert r.choices[0].message.content and "writemypaper" not in (r.choices[0].model_extra or {})
            r = client.completions.create(model=MODEL, prompt=SUMMARY, max_tokens=4, n=2, temperature=1.0)
            assert len(r.choices) == 2 and all("writemypaper" not in (c.model_extra or {}) for c in r.choices)
            assert "".join(c.choices[0].delta.content or "" for c in chat(client, stream=True) if c.choices)
            assert httpx.get(f"{base}/health").json()["fact_check"] is False
    assert not loads, "Kiwi was loaded by a server without the fact check"
    # The same spy sees a server with the fact check use Kiwi.
    with serving(create_app(generator, LIMITS, model_name=MODEL)) as base:
        body = {"summary": SUMMARY, "text": f"새 문장 {time.time_ns()}"}
        assert httpx.post(f"{base}/v1/writemypaper/check", json=body).status_code == 200
    assert loads  # morphemes() caches by text, hence a text never seen before


def test_check_endpoint(url):
    r = httpx.post(f"{url}/v1/writemypaper/check",
                   json={"summary": SUMMARY, "text": "1999년에 대학생 1,200명을 조사하였고 응답률은 87%였다."})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [(f["text"], f["kind"]) for f in body["unsupported"]] == [("1999년", "year"), ("87%", "number")]
    assert all(body["text"][f["start"]:f["end"]] == f["text"] for f in body["unsupported"])


# ---------------------------------------------------------------------------------------------------------------------
# the queue: full means 429, a client that leaves frees its slot, concurrent requests are all answered


class GatedGenerator:
    """Stands in for Generator: writes a fixed text, but only once `gate` is open."""

    def __init__(self, tokenizer, text="2021년 연구 결과이다."):
        self.tokenizer, self.text = tokenizer, text
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.calls = 0

    def encode(self, summary):
        return prompts.encode_prompt(self.tokenizer, summary)

    def generate(self, summaries, settings, batch_size=8, stop=None, cancelled=None):
        self.calls += 1
        assert self.gate.wait(60), "the test never opened the gate"
        return [[self.text] * settings.num_return_sequences for _ in summaries]

    def stream(self, summary, settings, stop=None):
        self.calls += 1
        assert self.gate.wait(60), "the test never opened the gate"
        yield from self.text.split(" ")


def post_in_background(url, path, body, pool):
    return pool.submit(httpx.post, f"{url}{path}", json=body, timeout=120)


def test_full_queue_gets_429_and_nothing_is_dropped(generator):
    gated = GatedGenerator(generator.tokenizer)
    with serving(create_app(gated, Limits(queue_depth=2))) as url, ThreadPoolExecutor(4) as pool:
        first = post_in_background(url, "/v1/chat/completions", OK, pool)
        second = post_in_background(url, "/v1/completions", {"prompt": SUMMARY, "max_tokens": 4}, pool)
        wait_until(lambda: health(url)["queue"]["active"] == 2, what="two admitted requests")
        # Full: plain, streaming and through the client library, all refused before any generation.
        err = assert_openai_error(httpx.post(f"{url}/v1/chat/completions", json=OK), 429, code="queue_full")
        assert err["type"] == "rate_limit_error"
        r = httpx.post(f"{url}/v1/chat/completions", json=OK | {"stream": True})
        assert_openai_error(r, 429)
        assert r.headers["retry-after"] == "1"
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.RateLimitError):
            chat(client)
        gated.gate.set()
        assert first.result().status_code == 200 and second.result().status_code == 200
        assert first.result().json()["choices"][0]["message"]["content"] == gated.text
        # Both were answered; the queue is empty again and takes new work.
        wait_until(lambda: health(url)["queue"]["active"] == 0, what="the queue to drain")
        assert httpx.post(f"{url}/v1/chat/completions", json=OK).status_code == 200


def test_client_leaving_the_queue_frees_its_slot(generator):
    gated = GatedGenerator(generator.tokenizer)
    with serving(create_app(gated, Limits(queue_depth=2))) as url, ThreadPoolExecutor(2) as pool:
        running = post_in_background(url, "/v1/chat/completions", OK, pool)
        wait_until(lambda: health(url)["queue"]["active"] == 1, what="the first request")
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=OK | {"stream": True}) as r:
            assert r.status_code == 200
            wait_until(lambda: health(url)["queue"]["waiting"] == 1, what="the stream to queue")
        # The streaming client left while queued: its slot is free before the model ever saw it.
        wait_until(lambda: health(url)["queue"]["active"] == 1, what="the slot to free")
        # So does a plain request whose client gives up waiting.
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/chat/completions", json=OK, timeout=httpx.Timeout(10, read=1.0))
        wait_until(lambda: health(url)["queue"]["active"] == 1, what="the slot to free")
        gated.gate.set()
        assert running.result().status_code == 200
        wait_until(lambda: health(url)["queue"]["active"] == 0, what="the queue to drain")
        # Three were admitted; only the first reached the model.
        assert health(url)["served"]["requests"] == 3 and gated.calls == 1


def test_client_disconnecting_mid_stream_stops_generation(generator):
    """With the real model: a client that leaves mid-stream stops the model within a token or so, frees its slot,
    and the next request is answered."""
    limits = Limits(max_new_tokens=1024, queue_depth=1)
    with serving(create_app(generator, limits)) as url:
        body = OK | {"max_tokens": 1024, "temperature": 1.0, "repetition_penalty": 1.0, "seed": 1, "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                    break  # the model is writing; now hang up
        left = time.monotonic()
        wait_until(lambda: health(url)["queue"]["active"] == 0, timeout=30, what="the slot to free")
        assert generator.lock.acquire(timeout=30), "the model is still generating for a client that left"
        generator.lock.release()
        stopped_after = time.monotonic() - left
        # 1024 tokens would take minutes on this CPU; a stopped generation frees the model in seconds.
        assert stopped_after < 30
        r = httpx.post(f"{url}/v1/chat/completions", json=OK, timeout=120)
        assert r.status_code == 200, r.text
        assert health(url)["queue"]["active"] == 0


def test_concurrent_requests_are_all_answered_and_batched(client, url):
    before = health(url)["served"]

    def one(i):
        if i % 4 == 3:
            return "".join(c.choices[0].delta.content or "" for c in chat(client, stream=True) if c.choices)
        return chat(client).choices[0].message.content

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(8)))
    assert len(answers) == 8 and all(isinstance(a, str) for a in answers)
    after = health(url)
    assert after["queue"]["active"] == 0
    assert after["served"]["requests"] - before["requests"] == 8
    # Six plain requests with equal settings share model calls; two streams get a call each.
    assert after["served"]["model_calls"] - before["model_calls"] < 8
    assert after["served"]["largest_batch"] >= 2


# ---------------------------------------------------------------------------------------------------------------------
# grounding and candidates, asked for per request


def test_grounded_candidates_through_the_client(client):
    """Real model: four candidates, grounded, best first; only the summary's numbers appear in what comes back."""
    import re

    r = chat(client, max_tokens=24, temperature=1.0, seed=5, extra_body={"candidates": 4, "grounded": True})
    text = r.choices[0].message.content
    assert all(m.group().rstrip(".,") in {"1,200", "1200", "2019", "2,019"}
               for m in re.finditer(r"[0-9][0-9.,]*", text)), text
    facts = r.choices[0].model_extra["writemypaper"]["unsupported"]
    assert not [f for f in facts if f["kind"] in ("number", "year")], facts


def test_a_target_length_steers_the_abstract_and_comes_back_counted(client, url):
    """Real model: target_chars through the client's extra body, the length counted next to the fact check; the
    stream is steered alike, and /check counts what it streamed."""
    from writemypaper.decoding import FLOOR

    r = chat(client, max_tokens=48, temperature=0, extra_body={"target_chars": 50})
    text, check = r.choices[0].message.content, r.choices[0].model_extra["writemypaper"]
    assert check["target_chars"] == 50 and check["chars"] == char_count(text)
    assert check["chars"] >= FLOOR * 50 or r.choices[0].finish_reason == "length", text
    streamed = "".join(c.choices[0].delta.content or "" for c in chat(client, max_tokens=48, temperature=0,
                                                                     stream=True, extra_body={"target_chars": 50})
                       if c.choices)
    assert streamed == text  # greedy: the same steering in both
    body = httpx.post(f"{url}/v1/writemypaper/check", json={"summary": SUMMARY, "text": streamed}).json()
    assert body["chars"] == check["chars"]


class Recording(GatedGenerator):
    """Opens its gate at once and remembers the settings of each call."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self.gate.set()
        self.settings = []

    def generate(self, summaries, settings, batch_size=8, stop=None, cancelled=None):
        self.settings.append(settings)
        return super().generate(summaries, settings, batch_size, stop, cancelled)


def test_request_fields_reach_the_generator(generator):
    rec = Recording(generator.tokenizer)
    with serving(create_app(rec, LIMITS)) as url:
        assert httpx.post(f"{url}/v1/chat/completions", json=OK).status_code == 200
        body = OK | {"candidates": 3, "grounded": False, "temperature": 0.9}
        assert httpx.post(f"{url}/v1/chat/completions", json=body).status_code == 200
    default, asked = rec.settings
    assert default.grounded is True and default.candidates == 1
    assert asked.grounded is False and asked.candidates == 3 and asked.rows_per_summary == 3


class Targeted(GatedGenerator):
    """Remembers each call's summaries and per-summary target lengths."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self.seen = []

    def generate(self, summaries, settings, batch_size=8, stop=None, cancelled=None, targets=None):
        self.seen.append((len(summaries), targets))
        return super().generate(summaries, settings, batch_size, stop, cancelled)


def test_requests_that_differ_only_in_target_length_share_a_model_call(generator):
    """Each row of a batch is steered to its own target, so a target does not split the queue into calls."""
    gated = Targeted(generator.tokenizer)
    with serving(create_app(gated, Limits(queue_depth=4))) as url, ThreadPoolExecutor(3) as pool:
        first = post_in_background(url, "/v1/chat/completions", OK, pool)
        wait_until(lambda: gated.calls == 1, what="the first call")
        asked = [OK | {"max_tokens": 32, "target_chars": t} for t in (50, 80)]
        waiting = [post_in_background(url, "/v1/chat/completions", body, pool) for body in asked]
        wait_until(lambda: health(url)["queue"]["waiting"] == 2, what="two requests with targets to queue")
        assert all(not r.done() for r in waiting), [r.result().text for r in waiting if r.done()]
        gated.gate.set()
        assert all(r.result().status_code == 200 for r in [first, *waiting])
    assert gated.seen[0] == (1, None)
    assert gated.seen[1][0] == 2 and sorted(gated.seen[1][1]) == [50, 80]


# ---------------------------------------------------------------------------------------------------------------------
# the API key


KEY = "sk-test-0123456789"


def test_api_key_right_wrong_and_none(generator):
    rec = Recording(generator.tokenizer)
    with serving(create_app(rec, LIMITS, model_name=MODEL, api_key=KEY)) as url:
        right = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        assert chat(right).choices[0].message.content == rec.text
        assert [m.id for m in right.models.list().data] == [MODEL]
        wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            chat(wrong)
        assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        # No key at all: the client leaves the Authorization header out when told to.
        with pytest.raises(openai.AuthenticationError) as e:
            chat(right, extra_headers={"Authorization": OMIT})
        assert "needs an API key" in e.value.body["message"]
        for r in (httpx.post(f"{url}/v1/chat/completions", json=OK),
                  httpx.post(f"{url}/v1/writemypaper/check", json={"summary": SUMMARY, "text": "x"}),
                  httpx.get(f"{url}/v1/no-such-route", headers={"Authorization": "Basic " + KEY})):
            assert_openai_error(r, 401, code="invalid_api_key")
            assert r.headers["www-authenticate"] == "Bearer"
        assert len(rec.settings) == 1  # only the request with the right key reached the model
        # The page and the health check stay open, and the page learns that it must ask for a key.
        assert httpx.get(f"{url}/").status_code == 200 and httpx.get(f"{url}/static/app.js").status_code == 200
        assert health(url)["api_key_required"] is True


def test_no_key_beyond_loopback_is_refused(capsys, monkeypatch):
    from writemypaper.cli import main
    from writemypaper.serve import is_loopback

    monkeypatch.delenv("WRITEMYPAPER_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--api-key" in err[0] and "--allow-no-key" in err[0]
    assert main(["serve", "--api-key", "has space"]) == 2
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.0.10") and not is_loopback("example.org")
