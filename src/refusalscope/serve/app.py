"""The playground's HTTP API and page (FastAPI), over a `Playground` and a `ModelWorker`.

Routes (all JSON unless noted):

    GET  /                         the page (static files from the package, no build step)
    GET  /api/info                 model, SAEs, direction, limits
    GET  /api/latents              discovered latents with their scores
    GET  /api/search?q=&layer=     any latent of the loaded SAEs, by index or promoted token
    GET  /api/card/{layer}/{i}     a latent's feature card
    POST /api/activations          a latent's activation on every token of a prompt
    POST /api/generate             server-sent events: gate, steered and plain tokens, replies
    POST /api/curve                server-sent events: progress and refusal-vs-strength points
    POST /api/cancel/{job}         stop a queued or running job
    GET  /api/specs, /api/specs/{name}; POST /api/specs     list, load, save spec files

Errors are `{"error": …, "fix": …}` with a 4xx status: 400 for input the engine rejects
(RefusalScopeError), 413 for an oversized body, 422 for a malformed one. Model output never
reaches the page as HTML: the page inserts it with textContent, and the Content-Security-
Policy below forbids inline scripts, so even a mistake there could not run one.
"""

from __future__ import annotations

import asyncio
import json
import queue
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import RefusalScopeError
from .playground import Playground
from .schemas import MAX_BODY_BYTES, ActivationRequest, CurveRequest, GenerateRequest, SaveSpecRequest
from .worker import Job, ModelWorker

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
KEEPALIVE_S = 15.0
POLL_S = 0.01  # how often a waiting request looks at its job's queue


def static_dir():
    return resources.files("refusalscope.serve") / "static"


def sse(event: dict[str, Any]) -> str:
    name = event.get("event", "message")
    data = {k: v for k, v in event.items() if k != "event"}
    return f"event: {name}\ndata: {json.dumps(data, allow_nan=False, default=str)}\n\n"


class BodyLimit:
    """Refuses request bodies over `limit` bytes (by Content-Length, or while reading a
    chunked body) before any handler parses them."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            response = JSONResponse(
                {
                    "error": f"the request body is larger than {self.limit} bytes",
                    "fix": "send a shorter prompt or fewer items",
                },
                status_code=413,
            )
            return await response(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, f"the request body is larger than {self.limit} bytes")
            return message

        return await self.app(scope, limited, send)


async def job_events(job: Job, keepalive_s: float | None = None) -> AsyncIterator[dict[str, Any] | None]:
    """A job's events as the worker thread puts them on its queue, polled without blocking the
    event loop (the queue is a thread queue, not an asyncio one). Yields None after each
    `keepalive_s` of silence so a stream can keep its connection open; ends with the job."""
    waited = 0.0
    while True:
        try:
            event = job.events.get_nowait()
        except queue.Empty:
            await asyncio.sleep(POLL_S)
            waited += POLL_S
            if keepalive_s is not None and waited >= keepalive_s:
                waited = 0.0
                yield None
            continue
        if event is None:
            return
        waited = 0.0
        yield event


def error(status: int, problem: str, fix: str | None = None) -> JSONResponse:
    return JSONResponse({"error": problem, "fix": fix}, status_code=status, headers=SECURITY_HEADERS)


def describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for item in exc.errors()[:5]:
        where = ".".join(str(p) for p in item.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {item.get('msg', 'invalid')}")
    return "; ".join(parts)


def create_app(
    playground: Playground, worker: ModelWorker | None = None, *, allowed_hosts: list[str] | None = None
) -> FastAPI:
    """The FastAPI app. `allowed_hosts` (the CLI passes localhost and the bound host)
    refuses requests whose Host header names anything else, which stops a web page from
    reaching the local server through DNS rebinding."""
    worker = worker or ModelWorker()
    app = FastAPI(title="refusalscope playground", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.playground = playground
    app.state.worker = worker
    if allowed_hosts:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.add_middleware(BodyLimit)

    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    @app.exception_handler(RefusalScopeError)
    async def user_error(request: Request, exc: RefusalScopeError):
        return error(400, exc.problem, exc.fix)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return error(422, f"invalid request: {describe_validation(exc)}", "see /api/info for the accepted limits")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):  # logged by uvicorn; the client gets no traceback
        return error(500, f"internal error ({type(exc).__name__})", "see the server log")

    # ------------------------------------------------------------------ page
    app.mount("/static", StaticFiles(directory=str(static_dir())), name="static")

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(str(static_dir() / "index.html"), media_type="text/html")

    # ------------------------------------------------------------------ reading
    @app.get("/api/info")
    def info():
        return playground.info()

    @app.get("/api/latents")
    def latents():
        return {"latents": playground.latents()}

    @app.get("/api/search")
    def search(
        q: str = Query("", max_length=100),
        layer: int | None = Query(None, ge=0, le=1000),
        limit: int = Query(50, ge=1, le=200),
    ):
        return {"results": playground.search(q, layer, limit)}

    @app.get("/api/card/{layer}/{latent}")
    def card(layer: int, latent: int):
        return playground.card(layer, latent)

    @app.get("/api/queue")
    def queue_state():
        current = worker.current
        return {"busy": worker.busy, "running": None if current is None else current.id}

    # ------------------------------------------------------------------ model jobs
    async def stream(job: Job):
        try:
            async for event in job_events(job, KEEPALIVE_S):
                yield ": keep-alive\n\n" if event is None else sse(event)
        finally:  # the client left (or the job ended): never leave work running for nobody
            job.cancel()

    def event_response(job: Job) -> StreamingResponse:
        return StreamingResponse(
            stream(job),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Job": job.id, **SECURITY_HEADERS},
        )

    @app.post("/api/generate")
    def generate(req: GenerateRequest):
        playground.check_prompt(req.prompt, req.system)
        steering = playground.build(req.steering)
        run = playground.generate_job(req.prompt, steering, req.max_new_tokens, req.baseline, req.system)
        return event_response(worker.submit(run, "generate"))

    @app.post("/api/curve")
    def curve(req: CurveRequest):
        for prompt in req.prompts:
            playground.check_prompt(prompt)
        run = playground.curve_job(list(req.prompts), req.steering, list(req.strengths), req.max_new_tokens)
        return event_response(worker.submit(run, "curve"))

    @app.post("/api/cancel/{job_id}")
    def cancel(job_id: str):
        if len(job_id) > 40 or not worker.cancel(job_id):
            raise HTTPException(404, f"no queued or running job '{job_id[:40]}'")
        return {"cancelled": job_id}

    @app.post("/api/activations")
    async def activations(req: ActivationRequest):
        playground.check_prompt(req.prompt)
        job = worker.submit(playground.activations_job(req.prompt, req.layer, req.latent), "activations")
        result: dict[str, Any] | None = None
        failed: dict[str, Any] | None = None
        try:
            async for event in job_events(job):
                if event is None:
                    continue
                if event["event"] == "activations":
                    result = {k: v for k, v in event.items() if k != "event"}
                elif event["event"] == "error":
                    failed = event
                    break
        finally:
            job.cancel()
        if failed is not None:
            return error(400, failed["error"], failed.get("fix"))
        if result is None:
            return error(409, "the request was cancelled before it ran")
        return result

    # ------------------------------------------------------------------ specs
    @app.get("/api/specs")
    def specs():
        return {"folder": str(playground.specs.root), "specs": playground.specs.names()}

    @app.get("/api/specs/{name}")
    def load_spec(name: str):
        return playground.load_spec(name)

    @app.post("/api/specs")
    def save_spec(req: SaveSpecRequest):
        return playground.save_spec(req.name, req.steering, req.description, req.overwrite)

    return app
