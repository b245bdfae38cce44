"""The server's errors: every failure is an OpenAI-shaped body, {"error": {"message", "type", "param", "code"}},
so the official clients raise the right exception for each.

    curl -s localhost:8000/v1/nothing      # {"error": {"message": "no route GET /v1/nothing", ...}}
"""

from __future__ import annotations

import logging

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

log = logging.getLogger("writemypaper.serve")


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(e: ApiError) -> JSONResponse:
    headers = {"Retry-After": "1"} if e.status == 429 else None
    return JSONResponse(error_body(e.message, e.type, e.param, e.code), status_code=e.status, headers=headers)


def validation_error(errors: list[dict]) -> ApiError:
    """One line for the first problem pydantic found; never echo the input back."""
    err = errors[0]
    # Drop "body" and the union members pydantic names in the path ("content.str", "prompt.list[str]").
    loc = [str(x) for x in err.get("loc", ()) if x != "body" and x not in ("str", "int", "float", "bool")
           and "[" not in str(x)]
    kind = err.get("type", "")
    if kind == "json_invalid":
        return ApiError(400, f"malformed JSON in the request body: {err.get('ctx', {}).get('error', err['msg'])}",
                        code="invalid_json")
    if kind == "model_attributes_type" and not loc:
        return ApiError(400, "the request body must be a JSON object (Content-Type: application/json)",
                        code="invalid_json")
    param = ".".join(loc) or None
    if kind == "missing":
        return ApiError(400, f"missing required parameter '{param}'", param, "missing_required_parameter")
    if kind == "extra_forbidden":
        # The name is the client's: say it back only if it is short, printable text.
        if not (param and len(param) <= 64 and param.isprintable() and _encodable(param)):
            return ApiError(400, "the request holds a parameter this server does not support", None,
                            "unsupported_parameter")
        return ApiError(400, f"this server does not support the parameter '{param}'", param, "unsupported_parameter")
    typed = kind.endswith("_type") or kind in ("literal_error", "union_tag_invalid")
    code = "invalid_type" if typed else "invalid_value"
    return ApiError(400, f"{param}: {err['msg']}" if param else err["msg"], param, code)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# ---------------------------------------------------------------------------------------------------------------------
# the app's exception handlers: create_app passes HANDLERS to FastAPI


async def _api_error(request, e: ApiError):
    return error_response(e)


async def _invalid(request, e: RequestValidationError):
    return error_response(validation_error(e.errors()))


async def _http(request, e: HTTPException):
    messages = {404: f"no route {request.method} {request.url.path}", 405: f"{request.method} is not allowed here",
                413: "the request body is too large"}
    return error_response(ApiError(e.status_code, messages.get(e.status_code, str(e.detail))))


async def _bug(request, e: Exception):
    log.exception("unexpected error")
    return error_response(ApiError(500, f"internal error: {type(e).__name__}"))


HANDLERS = {ApiError: _api_error, RequestValidationError: _invalid, HTTPException: _http, Exception: _bug}
