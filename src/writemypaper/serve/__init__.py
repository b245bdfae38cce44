r"""An OpenAI-compatible server and a web page for one loaded model, with a fact check on every abstract.

    writemypaper serve --model runs/demo        # then open http://127.0.0.1:8000/
    curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \
        -d '{"messages": [{"role": "user", "content": "요약..."}], "max_tokens": 256}'

The user turn is the summary: the engine adds the project's instruction and prompt, so clients need not know them.
Only the last user message counts; system text and earlier turns are ignored, because the model was tuned on one
instruction (Gemma has no system role to put them in anyway). Non-streaming choices carry a non-standard
`writemypaper` field, `metrics.faithfulness(summary, content)` with the length in characters (`chars`, 공백 포함) and
`target_chars`; streams can be checked afterwards with POST /v1/writemypaper/check. `usage` and `finish_reason` come from re-tokenizing the returned text.
Three extra body fields: `grounded` (default true: only the summary's numbers can be written), `candidates`
(default 1: sample that many and return the best by the fact check; not with stream) and `target_chars` (default
none: steer the abstract towards that many characters, 50 to 5000, without changing the prompt). Unset sampling fields take
`GenerationSettings`' defaults, the same as `writemypaper generate`. `stop` (up to 4 strings) ends the text before the
first one, streamed or not. A parameter the server does not honour is a 400 (`unsupported_parameter`), never ignored;
OpenAI's presence_penalty, frequency_penalty and logprobs pass only at their neutral values.
`serve --no-fact-check` drops the fact check (and Kiwi, whose model some machines cannot hold): no `writemypaper`
field, no candidates > 1, no /v1/writemypaper/check. The OpenAPI schema (app.openapi(), not served) documents every
route's answers; tests/test_serve_fuzz.py fuzzes the server against it.

With `--api-key KEY` (or WRITEMYPAPER_API_KEY) every /v1 route needs `Authorization: Bearer KEY`; the page and
/health stay open. Listening beyond loopback without a key is refused unless `--allow-no-key`.

Where things are:
    app.py        create_app: the generator, scheduler and limits in app.state, the routers, errors, guards
    api.py        the OpenAI routes under /v1 (and /v1/writemypaper/check)
    page.py       the web page and its two assets (and who may frame it: Colab);  health.py: GET /health
    schemas.py    the request bodies (pydantic);  limits.py: what a request may ask for, and its settings
    scheduler.py  the queue in front of the one model;  guards.py: body size, API key, loopback
    errors.py     OpenAI-shaped error bodies;  run.py: the `serve` verb and `serving()` for tests and benches
    stops.py      the `stop` parameter, on whole texts and on streamed pieces
"""

from writemypaper.serve.app import create_app
from writemypaper.serve.guards import check_api_key, is_loopback
from writemypaper.serve.limits import Limits
from writemypaper.serve.run import main, serving

__all__ = ["Limits", "check_api_key", "create_app", "is_loopback", "main", "serving"]
