"""The `serve` verb: check the address and the key, load the model once, and run uvicorn until interrupted; and
`serving()`, the same app on a free loopback port in a thread, for tests and benches.

    writemypaper serve --model runs/demo --port 8000
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from writemypaper import engines
from writemypaper.errors import UserError
from writemypaper.serve.app import create_app
from writemypaper.serve.guards import check_api_key, is_loopback
from writemypaper.serve.limits import Limits
from writemypaper.weights import EMBEDDED


@contextmanager
def serving(app, host: str = "127.0.0.1") -> Iterator[str]:
    """Run `app` with uvicorn in a background thread on a free port; yields its base URL. For tests and benches."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))  # the kernel picks the port, and we hold it: no race with another process
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def main(model: str | None = None, host: str = "127.0.0.1", port: int = 8000, precision: str = "auto",
         max_input_chars: int = Limits.max_input_chars, max_new_tokens: int = Limits.max_new_tokens,
         min_temperature: float = Limits.min_temperature, max_temperature: float = Limits.max_temperature,
         queue_depth: int = Limits.queue_depth, max_batch_size: int = Limits.max_batch_size,
         api_key: str | None = None, allow_no_key: bool = False, fact_check: bool = True) -> None:
    """Load the model once and serve the OpenAI-compatible API and the page until interrupted. fact_check=False
    serves without Kiwi (see create_app)."""
    import os

    import uvicorn

    limits = Limits(max_input_chars, max_new_tokens, min_temperature, max_temperature, queue_depth,
                    max_batch_size).validate()
    api_key = check_api_key(api_key if api_key is not None else os.environ.get("WRITEMYPAPER_API_KEY") or None)
    if not api_key and not is_loopback(host) and not allow_no_key:
        raise UserError(f"--host {host} lets other machines use this server: give --api-key KEY (or set "
                        "WRITEMYPAPER_API_KEY), or --allow-no-key to serve it without one")
    _check_port(host, port)
    name = _served_name(model)
    app = create_app(engines.load(model, precision=precision), limits, model_name=name, api_key=api_key,
                     fact_check=fact_check)
    if not api_key and not is_loopback(host):
        print(f"writemypaper: warning: listening on {host} with no API key: anyone who can reach it can use it")
    shown = f"[{host}]" if ":" in host else host
    auth = "; the API needs 'Authorization: Bearer KEY'" if api_key else ""
    print(f"writemypaper: serving {name} at http://{shown}:{port}/  (OpenAI API: http://{shown}:{port}/v1{auth})")
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)


def _check_port(host: str, port: int) -> None:
    """Fail in one line before the model loads, rather than after, when the address is taken."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port} is not in [0, 65535]")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(f"--host {host}: {e.strerror}") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port}: {e.strerror}; choose another --port") from None


def _served_name(model: str | None) -> str:
    """The name clients see and send back: never a local path, which would tell them about this machine."""
    if model is None or model == EMBEDDED:
        return EMBEDDED
    p = Path(model).expanduser()
    return p.resolve().name if p.exists() else model
