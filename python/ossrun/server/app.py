"""The FastAPI application: routes, authentication, and the engine's life cycle."""

from __future__ import annotations

import contextlib

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .. import __version__
from . import chat_completions, completions, errors, responses
from .auth import BearerAuth
from .engine import Engine, EngineOptions
from .schemas import ChatCompletionRequest, CompletionRequest, ResponsesRequest
from .store import ResponseStore


def create_app(options: EngineOptions, *, api_key: str | None = None, store_path=None) -> FastAPI:
    engine = Engine(options)
    store = ResponseStore(store_path) if store_path is not None else None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.load_in_background()  # loads in the background; requests get 503 until it is ready
        yield
        engine.close()
        if store is not None:
            store.close()

    app = FastAPI(title="ossrun", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.engine = engine
    errors.install(app)

    # Before the body is read or validated: without the key, nothing but /health answers.
    app.add_middleware(BearerAuth, api_key=api_key)

    @app.get("/health")
    async def health():
        if engine.error is not None:
            return JSONResponse({"status": "error", "error": engine.error}, status_code=503)
        if not engine.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ok", "model": engine.model_id, "n_ctx": engine.n_ctx,
                "weights": engine.model.mmap_reason, **engine.scheduler.status()}

    @app.get("/v1/models")
    async def list_models():
        engine.require(None)
        return {"object": "list", "data": [_model_card(engine)]}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str):
        engine.require(model_id)
        return _model_card(engine)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request):
        return await chat_completions.create(body, request, engine)

    @app.post("/v1/responses")
    async def create_response(body: ResponsesRequest, request: Request):
        return await responses.create(body, request, engine, store)

    @app.get("/v1/responses/{response_id}")
    async def get_response(response_id: str):
        engine.require(None)
        return responses.get(response_id, engine, store)

    @app.post("/v1/completions")
    async def complete(body: CompletionRequest, request: Request):
        return await completions.create(body, request, engine)

    return app


def _model_card(engine: Engine) -> dict:
    return {"id": engine.model_id, "object": "model", "created": engine.created, "owned_by": "ossrun",
            "context_length": engine.n_ctx}
