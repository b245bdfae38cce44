"""The web page in headless Chromium (Debian's, through Playwright): a Korean summary in, a streamed abstract out,
and the facts the summary does not support marked by the server's real faithfulness check.

    pytest -m browser tests/test_serve_browser.py
"""

import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip("Debian's chromium is not installed (apt-get install -y chromium fonts-noto-cjk)",
                allow_module_level=True)
sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright

from writemypaper.models import load_tokenizer  # noqa: E402
from writemypaper.serve import Limits, create_app, serving  # noqa: E402

SUMMARY = "본 연구는 한ㆍ중ㆍ일 세 나라 대학생 1,200명의 정치 태도를 비교하였다. 권위주의적 태도가 줄었으나 속도에 차이가 있었다."
# "1999년" and "87%" appear nowhere in the summary: the check must mark them. (It counts Korean numerals too, so the
# summary holds the abstract's "세 나라".)
ABSTRACT = ("본 연구는 1999년부터 한ㆍ중ㆍ일 세 나라 대학생 1,200명의 정치 태도를 설문으로 비교하였다. 응답률은 87%였다. "
            "분석 결과 세 나라 모두 권위주의적 태도가 줄었으나 그 속도에는 뚜렷한 차이가 있었다.")
SCREENSHOT = Path("/tmp/writemypaper-serve-page.png")


class ScriptedGenerator:
    """Stands in for Generator (same generate/stream/tokenizer interface): an untrained model would not reliably
    invent a fact, so this one writes a fixed abstract, a word every `delay` seconds so the streaming shows."""

    def __init__(self, text: str, delay: float = 0.08):
        self.text, self.delay = text, delay
        self.tokenizer = load_tokenizer("gemma3-270m", padding_side="left")
        self.lock = threading.Lock()

    def encode(self, summary):
        from writemypaper import prompts

        return prompts.encode_prompt(self.tokenizer, summary)

    def generate(self, summaries, settings, batch_size=8, stop=None, cancelled=None):
        return [[self.text] * settings.num_return_sequences for _ in summaries]

    def stream(self, summary, settings, stop=None):
        for i, word in enumerate(self.text.split(" ")):
            time.sleep(self.delay)
            yield word if i == 0 else " " + word


@pytest.fixture(scope="module")
def page_url():
    with serving(create_app(ScriptedGenerator(ABSTRACT), Limits(max_input_chars=200))) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, page_url):
    context = browser.new_context(locale="ko-KR", viewport={"width": 900, "height": 800})
    page = context.new_page()
    outside = []
    # Everything the page loads must come from the server itself.
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(page_url) else None)
    page.goto(page_url + "/")
    yield page
    context.close()
    assert not outside, f"the page reached outside the server: {outside}"


def test_summary_in_streamed_abstract_out_with_marks(page):
    page.fill("#summary", SUMMARY)
    assert page.text_content("#count").startswith(f"{len(SUMMARY)} / 200")
    page.fill("#max-tokens", "64")
    page.click("#write")
    # Streaming: part of the abstract shows while the button still offers to stop.
    page.wait_for_selector("#output:not(:empty)")  # a selector, not a JS string: the page's CSP forbids eval
    assert page.text_content("#write") == "중지"
    assert len(page.text_content("#output")) < len(ABSTRACT)
    # Done: the unsupported facts are marked, by the server's faithfulness check.
    page.wait_for_selector("#output mark", timeout=30_000)
    marks = page.locator("#output mark").all_text_contents()
    assert marks == ["1999년", "87%"]
    assert page.text_content("#output") == ABSTRACT
    assert page.text_content("#write") == "초록 쓰기"
    assert "2개" in page.text_content("#facts")
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    # The copy button copies the abstract.
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.click("#copy")
    assert page.evaluate("navigator.clipboard.readText()") == ABSTRACT


def test_input_too_long_says_so(page):
    page.fill("#summary", "가" * 201)
    assert "over" in page.get_attribute("#count", "class")
    page.click("#write")
    page.wait_for_selector("#status.error")
    assert "너무 깁니다" in page.text_content("#status")


def test_busy_server_says_so(page):
    # A full queue is tested for real in test_serve.py; here only how the page shows the server's 429.
    body = '{"error": {"message": "busy", "type": "rate_limit_error", "param": null, "code": "queue_full"}}'
    page.route("**/v1/chat/completions", lambda route: route.fulfill(status=429, body=body,
                                                                      content_type="application/json"))
    page.fill("#summary", SUMMARY)
    page.click("#write")
    page.wait_for_selector("#status.error")
    assert "서버가 바쁩니다" in page.text_content("#status")


def test_grounding_and_candidates_are_sent_and_the_best_is_shown(page):
    sent = []
    page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/v1/chat/completions") else None)
    page.fill("#summary", SUMMARY)
    assert page.is_checked("#grounded")  # on by default
    page.uncheck("#grounded")
    page.select_option("#candidates", "4")
    page.click("#write")
    page.wait_for_selector("#output mark", timeout=30_000)
    assert page.locator("#output mark").all_text_contents() == ["1999년", "87%"]
    assert page.text_content("#output") == ABSTRACT
    assert "후보 4편" in page.text_content("#status")
    assert sent[-1]["candidates"] == 4 and sent[-1]["grounded"] is False and not sent[-1].get("stream")
    # Back to one candidate: streamed again, grounded again.
    page.check("#grounded")
    page.select_option("#candidates", "1")
    page.click("#write")
    page.wait_for_selector("#output mark", timeout=30_000)
    assert sent[-1]["stream"] is True and sent[-1]["grounded"] is True and "candidates" not in sent[-1]


KEY = "sk-page-0123456789"


@pytest.fixture(scope="module")
def keyed_url():
    with serving(create_app(ScriptedGenerator(ABSTRACT, delay=0.01), Limits(max_input_chars=200), api_key=KEY)) as url:
        yield url


def test_the_page_asks_for_the_key_once_and_sends_it(browser, keyed_url):
    context = browser.new_context(locale="ko-KR")
    page = context.new_page()
    page.goto(keyed_url + "/")
    page.wait_for_selector("#key-form:not([hidden])")
    assert "API 키" in page.text_content("#status")
    # A wrong key: the server refuses, and the page asks again.
    page.fill("#api-key", "sk-wrong")
    page.click("#save-key")
    page.fill("#summary", SUMMARY)
    page.click("#write")
    page.wait_for_selector("#key-form:not([hidden])")
    assert "맞지 않습니다" in page.text_content("#status")
    page.fill("#api-key", KEY)
    page.click("#save-key")
    page.click("#write")
    page.wait_for_selector("#output mark", timeout=30_000)
    assert page.text_content("#output") == ABSTRACT
    # Kept in this browser: a reload does not ask again, and writing works at once.
    page.reload()
    page.wait_for_selector("#model:not(:empty)")
    assert page.is_hidden("#key-form")
    page.fill("#summary", SUMMARY)
    page.click("#write")
    page.wait_for_selector("#output mark", timeout=30_000)
    context.close()


def test_the_page_starts_at_the_server_default_and_says_when_the_length_cut_the_abstract(page, page_url):
    import httpx

    defaults = httpx.get(f"{page_url}/health").json()["defaults"]
    page.wait_for_selector("#model:not(:empty)")  # /health has been read
    assert page.input_value("#max-tokens") == str(defaults["max_tokens"])
    # A limit far below the abstract's length: the server answers finish_reason "length", and the page says so.
    page.fill("#summary", SUMMARY)
    page.fill("#max-tokens", "4")
    page.click("#write")
    page.wait_for_selector("#output mark", timeout=30_000)
    page.wait_for_selector("#output.cut")
    assert "잘렸습니다" in page.text_content("#status")
    # Every mark is labelled by its kind, in the server's words ("1999년" is a year).
    assert page.get_attribute("#output mark >> nth=0", "title") == "요약에 없는 연도: 확인하세요"
    # Within the limit: no such note.
    page.fill("#max-tokens", str(defaults["max_tokens"]))
    page.click("#write")
    page.wait_for_selector("#output:not(.cut) mark", timeout=30_000)
    assert "잘렸습니다" not in page.text_content("#status")
