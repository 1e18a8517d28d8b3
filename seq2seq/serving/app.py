"""The HTTP application: three translation APIs, health, metrics and the page.

- `POST /v1/translate`: the project's own API (n-best, scores, tokens, attention);
- `POST /translate`, `GET /languages`: LibreTranslate's API, which many apps speak;
- `POST /translator/translate`: OpenNMT-py's server API, with real status codes on errors;
- `GET /health`, `GET /metrics` (Prometheus), `GET /` (the page), `/docs` (OpenAPI).

Every error is JSON `{"error": "..."}` naming the field and the limit, with its status code.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import TypeAdapter, ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import seq2seq
from seq2seq.core.search import SearchSettings
from seq2seq.core.translate import Translation
from seq2seq.errors import Seq2SeqError
from seq2seq.serving.batcher import QueueFull, ShuttingDown
from seq2seq.serving.limits import ServeLimits
from seq2seq.serving.metrics import MetricsMiddleware, ServerMetrics
from seq2seq.serving.models import ServedModel, language_name
from seq2seq.serving.schemas import (
    ErrorResponse,
    Health,
    Language,
    LibreTranslateRequest,
    LibreTranslateResponse,
    OpenNMTRequestItem,
    OpenNMTResult,
    TranslateRequest,
    TranslateResponse,
)

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("seq2seq.serve")
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 413, 422, 503, 504)}
OPENNMT_ITEMS = TypeAdapter(list[OpenNMTRequestItem])


class ApiError(Exception):
    """A request the server will not or cannot answer: JSON `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class BodyLimitMiddleware:
    """Refuses a body over `max_bytes` with 413 before the app reads it, whether the client
    declared its length or streams it in chunks."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self.too_large(scope, receive, send)
            return
        messages: list[Message] = []  # read (bounded) before the app, then replayed to it
        size, more = 0, True
        while more:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            more = message["type"] == "http.request" and message.get("more_body", False)
            if size > self.max_bytes:
                await self.too_large(scope, receive, send)
                return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = (
            f"the request body is over the limit of {self.max_bytes:,} bytes (--max-body-bytes)"
        )
        await error_response(413, message)(scope, receive, send)


# C0 and C1 control characters but the tab (line breaks separate lines before this check),
# and the halves of UTF-16 surrogate pairs, which JSON's \\uD800 escapes can carry alone
FORBIDDEN = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]")


def check_line(line: str, field: str, limits: ServeLimits) -> None:
    """Refuse what the model cannot be given: over-long lines, control characters, lone
    surrogates."""
    if len(line) > limits.max_line_characters:
        raise ApiError(
            413,
            f"field '{field}' has {len(line):,} characters, over the limit of "
            f"{limits.max_line_characters:,} per line (--max-line-characters): split it into "
            "sentences",
        )
    if match := FORBIDDEN.search(line):
        character, position = match.group(), match.start()
        if "\ud800" <= character <= "\udfff":
            raise ApiError(
                400,
                f"field '{field}' has an unpaired surrogate U+{ord(character):04X} at character "
                f"{position}: send valid UTF-16 pairs or UTF-8 text",
            )
        raise ApiError(
            400,
            f"field '{field}' has the control character U+{ord(character):04X} at character "
            f"{position}: remove it (tabs are kept, line breaks separate lines)",
        )


def split_lines(text: str) -> list[str]:
    """A text's lines: `\\r\\n`, `\\r` and `\\n` all end one; a trailing line break adds none."""
    return (
        text.replace("\r\n", "\n").replace("\r", "\n").removesuffix("\n").split("\n")
        if text
        else [""]
    )


def request_lines(texts: Sequence[tuple[str, str]], limits: ServeLimits) -> list[list[str]]:
    """Each (field, text)'s lines, checked, with the request's total within `max_lines`."""
    lines = [split_lines(text) for _, text in texts]
    total = sum(len(group) for group in lines)
    if total > limits.max_lines:
        raise ApiError(
            413,
            f"the request has {total:,} lines, over the limit of {limits.max_lines:,} "
            "(--max-lines): send them in several requests",
        )
    for (field, _), group in zip(texts, lines):
        for number, line in enumerate(group):
            check_line(line, field if len(group) == 1 else f"{field}, line {number + 1}", limits)
    return lines


def search_for(
    model: ServedModel,
    limits: ServeLimits,
    beam_size: int | None = None,
    n_best: int | None = None,
    alpha: float | None = None,
    beta: float | None = None,
) -> SearchSettings:
    """The model's default search with what the request changed, checked against the limits."""
    default = model.translator.search
    beam_size = default.beam_size if beam_size is None else beam_size
    n_best = SearchSettings.nbest if n_best is None else n_best
    widest = min(limits.max_beam_size, model.translator.max_beam_size)
    if beam_size > widest:
        raise ApiError(422, f"field 'beam_size': at most {widest} on this server, got {beam_size}")
    if n_best > beam_size:
        raise ApiError(
            422,
            f"field 'n_best': at most beam_size ({beam_size}), got {n_best}: ask for a wider beam",
        )
    try:
        return replace(
            default,
            beam_size=beam_size,
            nbest=n_best,
            alpha=default.alpha if alpha is None else alpha,
            beta=default.beta if beta is None else beta,
        )
    except Seq2SeqError as error:
        raise ApiError(422, str(error)) from None


def weights(attention: Any) -> list[list[float]]:
    """Attention rows rounded to 4 decimals (a smaller answer; differences below that are noise)."""
    return attention.double().mul(1e4).round().div(1e4).tolist()


def describe(model: ServedModel, translation: Translation, with_attention: bool) -> dict:
    """The `LineTranslation` schema of one line."""
    translator = model.translator
    hypotheses = []
    for text, hypothesis in zip(translation.texts, translation.hypotheses):
        entry: dict[str, Any] = {
            "text": text,
            "score": hypothesis.log_probability,
            "target_tokens": translator.target_pieces(hypothesis),
        }
        if with_attention:
            entry["attention"] = weights(hypothesis.attention)
        hypotheses.append(entry)
    best = (
        hypotheses[0]
        if hypotheses
        else {
            "text": "",
            "score": None,
            "target_tokens": [],
            **({"attention": []} if with_attention else {}),
        }
    )
    source = translator.source_pieces(translation) if translation.hypotheses else []
    return {
        **best,
        "truncated": translation.truncated,
        "source_tokens": source,
        "n_best": hypotheses,
    }


def create_app(
    models: list[ServedModel], limits: ServeLimits = ServeLimits(), api_key: str | None = None
) -> FastAPI:
    """The application serving `models` (loaded already); closing it drains their batchers."""
    by_name = {model.name: model for model in models}
    by_pair = {(model.source_language, model.target_language): model for model in models}
    metrics = ServerMetrics(
        {
            "/v1/translate",
            "/translate",
            "/languages",
            "/translator/translate",
            "/health",
            "/metrics",
            "/",
        }
    )
    metrics.watch_queue(lambda: sum(model.batcher.queued_lines for model in models))
    for model in models:
        model.batcher.on_batch = metrics.batch_lines.observe

    public_limits = {
        name: getattr(limits, name)
        for name in ("max_lines", "max_line_characters", "max_beam_size")
    }

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        for model in models:  # after the in-flight requests: uvicorn waits for them first
            model.batcher.close()

    app = FastAPI(
        title="seq2seq",
        version=seq2seq.__version__,
        summary="GRU + attention neural machine translation",
        description=__doc__,
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def authorize(request: Request, body_key: str | None = None) -> None:
        """With --api-key: `Authorization: Bearer KEY`, or LibreTranslate's `api_key` field."""
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header[:7].lower() == "bearer " else body_key
        if given is None:
            raise ApiError(
                401,
                "this server needs an API key: send 'Authorization: Bearer KEY'",
                {"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise ApiError(401, "the API key is wrong", {"WWW-Authenticate": "Bearer"})

    def model_named(name: str | None) -> ServedModel:
        if name is None:
            return models[0]
        if name not in by_name:
            raise ApiError(
                400, f"field 'model': no model {name!r} here; served: {', '.join(by_name)}"
            )
        return by_name[name]

    def model_for(source: str, target: str) -> ServedModel:
        if (
            source == "auto"
        ):  # no language identification: a source-language model reads its own language
            candidates = [model for model in models if model.target_language == target]
            if len(candidates) == 1:
                return candidates[0]
        elif (source, target) in by_pair:
            return by_pair[(source, target)]
        served = ", ".join(f"{s}→{t}" for s, t in by_pair)
        raise ApiError(400, f"no model here translates {source}→{target}; served: {served}")

    async def translate(
        model: ServedModel, lines: list[str], search: SearchSettings
    ) -> list[Translation]:
        try:
            return await model.batcher.translate(lines, search)
        except QueueFull:
            raise ApiError(
                503,
                f"the queue is full ({limits.max_queue_lines:,} lines, --max-queue-lines): retry "
                "shortly",
                {"Retry-After": "1"},
            ) from None
        except ShuttingDown:
            raise ApiError(503, "the server is shutting down", {"Retry-After": "5"}) from None
        except TimeoutError:
            raise ApiError(
                504,
                f"not translated within {limits.timeout_seconds:g} s (--timeout-seconds): "
                "the server is busy; retry, or send fewer lines",
            ) from None

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(*describe_validation_error(error.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        message = str(error.detail)
        if isinstance(error.__cause__, UnicodeDecodeError):
            message = f"the body is not valid UTF-8 (byte {error.__cause__.start}): send UTF-8 JSON"
        elif error.status_code == 404:
            message = f"no route {request.url.path}: see /docs"
        elif error.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}: see /docs"
        return error_response(error.status_code, message, getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        log.exception("error answering %s %s", request.method, request.url.path)
        return error_response(
            500, f"internal error ({type(error).__name__}); the server log has the details"
        )

    async def require_key(request: Request) -> None:
        authorize(request)

    # as a dependency, the key is checked before the body is read: a stranger learns nothing
    # from 422s
    keyed = [Depends(require_key)]

    @app.post(
        "/v1/translate",
        response_model=TranslateResponse,
        responses=ERRORS,
        tags=["seq2seq"],
        dependencies=keyed,
    )
    async def translate_v1(body: TranslateRequest) -> JSONResponse:
        """Translate lines with n-best lists, scores, tokens and (when asked) attention."""
        model = model_named(body.model)
        search = search_for(model, limits, body.beam_size, body.n_best, body.alpha, body.beta)
        if isinstance(body.text, str):
            (lines,) = request_lines([("text", body.text)], limits)
        else:
            for index, item in enumerate(body.text):
                if "\n" in item or "\r" in item:
                    raise ApiError(
                        400, f"field 'text[{index}]' holds a line break: a list item is one line"
                    )
            lines = [
                line
                for group in request_lines(
                    [(f"text[{i}]", t) for i, t in enumerate(body.text)], limits
                )
                for line in group
            ]
        translations = await translate(model, lines, search)
        return JSONResponse(
            {
                "translations": [describe(model, t, body.attention) for t in translations],
                "model": model.info(),
            }
        )

    @app.post(
        "/translate",
        response_model=LibreTranslateResponse,
        responses=ERRORS,
        tags=["LibreTranslate"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    media: {"schema": {"$ref": "#/components/schemas/LibreTranslateRequest"}}
                    for media in (
                        "application/json",
                        "application/x-www-form-urlencoded",
                        "multipart/form-data",
                    )
                },
            }
        },
    )
    async def translate_libre(request: Request) -> JSONResponse:
        """LibreTranslate's `/translate`: `q` a string or a list, `source` (or `auto`), `target`."""
        body = parse_libre_request(await read_libre_fields(request))
        authorize(request, body.api_key)
        if body.format != "text":
            raise ApiError(
                400,
                f"field 'format': {body.format!r} is not supported, only 'text' (HTML tags would "
                "not be carried through the translation)",
            )
        model = model_for(body.source, body.target)
        texts = [body.q] if isinstance(body.q, str) else body.q
        if body.alternatives >= min(limits.max_beam_size, model.translator.max_beam_size):
            raise ApiError(
                422,
                "field 'alternatives': at most "
                f"{min(limits.max_beam_size, model.translator.max_beam_size) - 1} on this server, "
                f"got {body.alternatives}",
            )
        search = search_for(
            model,
            limits,
            max(model.translator.search.beam_size, body.alternatives + 1),
            body.alternatives + 1,
        )
        groups = request_lines(
            [("q" if isinstance(body.q, str) else f"q[{i}]", t) for i, t in enumerate(texts)],
            limits,
        )
        translations = iter(
            await translate(model, [line for group in groups for line in group], search)
        )
        candidates = []  # per text: its best translation, then its alternatives
        for group in groups:
            lines = [next(translations) for _ in group]
            candidates.append(
                [
                    "\n".join(line.texts[k] if k < len(line.texts) else "" for line in lines)
                    for k in range(body.alternatives + 1)
                ]
            )
        answer: dict[str, Any] = {
            "translatedText": candidates[0][0]
            if isinstance(body.q, str)
            else [c[0] for c in candidates]
        }
        if body.alternatives:
            answer["alternatives"] = (
                candidates[0][1:] if isinstance(body.q, str) else [c[1:] for c in candidates]
            )
        return JSONResponse(answer)

    @app.get("/languages", response_model=list[Language], responses=ERRORS, tags=["LibreTranslate"])
    async def languages(request: Request, api_key: str | None = None) -> JSONResponse:
        """The languages served, each with the target languages it translates into."""
        authorize(request, api_key)
        targets: dict[str, list[str]] = {}
        for source, target in by_pair:
            targets.setdefault(source, []).append(target)
        return JSONResponse(
            [
                {"code": code, "name": language_name(code), "targets": to}
                for code, to in targets.items()
            ]
        )

    @app.post(
        "/translator/translate",
        response_model=list[list[OpenNMTResult]],
        responses=ERRORS,
        tags=["OpenNMT-py"],
        dependencies=keyed,
    )
    async def translate_opennmt(items: list[OpenNMTRequestItem]) -> JSONResponse:
        """OpenNMT-py's `onmt_server` API: one list per n-best rank, each with one result per
        item."""
        ids = {item.id for item in items}
        if len(ids) > 1:
            raise ApiError(
                400,
                f"the items ask for several models ({', '.join(map(str, sorted(ids, key=str)))}): "
                "send one id per request",
            )
        model_id = ids.pop() if ids else None
        if model_id is not None and not 0 <= model_id < len(models):
            raise ApiError(
                400,
                f"field 'id': no model {model_id} here; served ids: 0 to {len(models) - 1} (see "
                "/health)",
            )
        model = models[model_id or 0]
        for index, item in enumerate(items):
            if "\n" in item.src or "\r" in item.src:
                raise ApiError(
                    400, f"field '[{index}].src' holds a line break: an item is one sentence"
                )
        groups = request_lines([(f"[{i}].src", item.src) for i, item in enumerate(items)], limits)
        search = model.translator.search
        translations = await translate(model, [group[0] for group in groups], search)
        return JSONResponse(
            [
                [
                    {
                        "src": item.src,
                        "tgt": t.texts[k] if k < len(t.texts) else "",
                        "n_best": search.nbest,
                        "pred_score": t.hypotheses[k].log_probability
                        if k < len(t.hypotheses)
                        else None,
                    }
                    for item, t in zip(items, translations)
                ]
                for k in range(search.nbest)
            ]
        )

    @app.get("/health", response_model=Health, tags=["operations"])
    async def health() -> JSONResponse:
        """Open without a key: the models are loaded before the port opens."""
        queued = sum(model.batcher.queued_lines for model in models)
        return JSONResponse(
            {
                "status": "ok",
                "models": [model.info() for model in models],
                "queue_lines": queued,
                "limits": public_limits,
            }
        )

    @app.get(
        "/metrics",
        responses=ERRORS,
        tags=["operations"],
        response_class=Response,
        dependencies=keyed,
    )
    async def prometheus() -> Response:
        """Prometheus's text format: requests by route and code, latency and batch-size histograms,
        queue."""
        content, media_type = metrics.exposition()
        return Response(content, media_type=media_type)

    def openapi() -> dict:
        """FastAPI's schema, plus the LibreTranslate body that the route parses itself (JSON or
        form)."""
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            body = LibreTranslateRequest.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            schema["components"]["schemas"].update(
                {**body.pop("$defs", {}), "LibreTranslateRequest": body}
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app


async def read_libre_fields(request: Request) -> dict[str, Any]:
    """LibreTranslate's fields from JSON or a form (`q` repeated for a list)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.form()
        fields: dict[str, Any] = {key: form.get(key) for key in form}
        if len(form.getlist("q")) > 1:
            fields["q"] = form.getlist("q")
        return fields
    body = await request.body()
    try:
        fields = json.loads(body)
    except UnicodeDecodeError as error:
        raise ApiError(
            400, f"the body is not valid UTF-8 (byte {error.start}): send UTF-8 JSON"
        ) from None
    except json.JSONDecodeError as error:
        raise ApiError(
            400,
            f"the body is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}",
        ) from None
    if not isinstance(fields, dict):
        raise ApiError(422, "the body must be a JSON object with 'q', 'source' and 'target'")
    return fields


def parse_libre_request(fields: dict[str, Any]) -> LibreTranslateRequest:
    try:
        return LibreTranslateRequest.model_validate(fields)
    except ValidationError as error:
        raise ApiError(*describe_validation_error(error.errors())) from None


def describe_validation_error(errors: Sequence[dict]) -> tuple[int, str]:
    """Status and one sentence for pydantic's first error: 400 for a body that is not JSON,
    422 for JSON of the wrong shape, naming the field and what was expected."""
    first = errors[0]
    if first["type"] == "json_invalid":
        return (
            400,
            f"the body is not valid JSON: {first['ctx']['error']} at character {first['loc'][-1]}",
        )
    # pydantic names the branch of a union (`str`, `list[str]`) in the location; the field is enough
    path = [
        part
        for part in first["loc"]
        if part != "body"
        and not (isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool")))
    ]
    field = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path).lstrip(
        "."
    )
    if not field and first["type"] in (
        "model_attributes_type",
        "dict_type",
        "list_type",
        "model_type",
    ):
        return (
            400 if isinstance(first.get("input"), bytes) else 422,
            "the body must be JSON (Content-Type: application/json) of the documented shape: see "
            "/docs",
        )
    if first["type"] == "missing":
        return 422, f"field '{field}' is missing"
    if first["type"] == "extra_forbidden":
        return 422, f"unknown field '{field}': see /docs for the fields"
    given = repr(first.get("input"))
    return 422, f"field '{field}': {first['msg'][0].lower()}{first['msg'][1:]} (got {given[:60]})"
