"""The OpenAI-compatible server of launch/serve.py, composed from transformers' own serving
pieces (transformers/cli/serving: the model in a process of its own, concurrent requests
decoded together by continuous batching, chat completions streamed or not) behind our
routes, limits, key and conversation log.

Not transformers' whole app (`transformers serve`): it also answers /load_model, /reset and
other routes that load or drop models on a client's word. Ours answers four."""

from __future__ import annotations

import uuid
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from transformers import AutoTokenizer, ContinuousBatchingConfig
from transformers.cli.serving.chat_completion import ChatCompletionHandler
from transformers.cli.serving.model_manager import ModelLoader, ModelManager
from transformers.cli.serving.utils import CancelOnDisconnect, EngineDeadError, GenerationState

from framework.config.commands import ServeConfig
from framework.config.schema import ConfigError
from framework.data.templates import stop_token_ids
from framework.hf.local import inference_dtype, local_weights, resolve_device
from framework.serve.conversations import ConversationLog
from framework.serve.guard import RequestError, RequestGuard, error_body

LOCAL_HOST = "127.0.0.1"
# Of a CPU machine's free RAM, for continuous batching's cache: the rest is the machine's.
CPU_CACHE_SHARE = 0.1


def serving_key(cfg: ServeConfig, environ: dict[str, str]) -> str | None:
    """The bearer key: api_key, else SERVE_API_KEY; ConfigError for a server reachable
    from other machines without one."""
    key = cfg.api_key or environ.get("SERVE_API_KEY") or None
    if key is None and cfg.host != LOCAL_HOST:
        raise ConfigError(
            f"host={cfg.host}: a server other machines reach needs a key; set api_key=... "
            "or the SERVE_API_KEY environment variable (or serve on host=127.0.0.1)"
        )
    return key


def model_directory(cfg: ServeConfig) -> str:
    """The served model's local directory, with safetensors weights and a chat template."""
    path = local_weights(cfg.model, cfg.cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    if not tokenizer.chat_template:
        raise ConfigError(
            f"model={cfg.model}: its tokenizer has no chat template; serve a training run's "
            "hf/ export (it carries the template it was trained with)"
        )
    return str(Path(path).resolve())


def build_app(cfg: ServeConfig, model_dir: str, api_key: str | None) -> FastAPI:
    """The app: the model's process starts now and loads the model; uvicorn serves it."""
    manager = _model_manager(cfg, model_dir)
    handler = ChatCompletionHandler(
        model_manager=manager, generation_state=manager.generation_state
    )
    secrets = () if api_key is None else (api_key,)
    log = (
        None
        if cfg.log_dir is None
        else ConversationLog(cfg.log_dir, cfg.log_retention_days, secrets)
    )
    served = cfg.name or cfg.model

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        manager.shutdown()

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.manager = manager
    _add_error_handlers(app)
    app.add_middleware(CancelOnDisconnect)
    app.add_middleware(
        RequestGuard,
        api_key=api_key,
        max_request_bytes=cfg.max_request_bytes,
        max_tokens=cfg.max_tokens,
        max_concurrent=cfg.max_concurrent,
        sampling=cfg.sampling,
    )

    @app.post("/v1/chat/completions")
    async def chat_completions(body: dict):
        if body.get("model") not in (None, served):
            raise RequestError(
                404, f"model={body['model']!r}: this server serves {served!r}", "not_found_error"
            )
        exchange_id = f"chatcmpl-{uuid.uuid4().hex}"
        response = await handler.handle_request({**body, "model": model_dir}, exchange_id)
        return response if log is None else log.capture(response, exchange_id, body["messages"])

    @app.get("/v1/models")
    def models():
        return {
            "object": "list",
            "data": [{"id": served, "object": "model", "created": 0, "owned_by": "local"}],
        }

    @app.get("/health")
    def health():
        if manager.is_dead:
            return JSONResponse(error_body(503, "the model's process died", "server_error"), 503)
        return {"status": "ok"}

    if log is not None:

        @app.post("/v1/feedback")
        async def feedback(body: dict):
            log.record_feedback(body)
            return {"status": "recorded"}

    return app


class SamplingModelLoader(ModelLoader):
    """transformers' loader, in the model's process, with the loaded model's generation
    config set to sample through a temperature, a top-k and a top-p processor: continuous
    batching builds its processors from that config once, and a request's temperature,
    top_k and top_p (which every request sends, _model_manager) apply only through
    processors that exist. A config that decodes greedily would answer all greedily.
    Each processor costs every request, greedy ones too (those go through top-k = 1):
    sampling=false loads the model as it is."""

    def load_model_and_processor(self, model_id: str, on_progress=None):
        model, processor = super().load_model_and_processor(model_id, on_progress)
        # Values other than the neutral ones, for each processor to be built; every
        # request overrides them.
        model.generation_config.update(do_sample=True, temperature=0.5, top_k=50, top_p=0.5)
        return model, processor


def _model_manager(cfg: ServeConfig, model_dir: str) -> ModelManager:
    device = resolve_device(cfg.device)
    loader = (SamplingModelLoader if cfg.sampling else ModelLoader)(
        device=str(device),
        dtype=str(inference_dtype(cfg.dtype, device)).removeprefix("torch."),
        trust_remote_code=cfg.trust_remote_code,
        continuous_batching=cfg.continuous_batching,
    )
    share = cfg.cache_memory_share or (0.9 if device.type == "cuda" else CPU_CACHE_SHARE)
    state = GenerationState(
        continuous_batching=cfg.continuous_batching,
        cb_config=ContinuousBatchingConfig(max_memory_percent=share),
        max_model_len=cfg.max_model_len,
    )
    manager = ModelManager(loader, state, model_timeout=-1, force_model=model_dir)
    for engine in manager.engines.values():
        config = engine.generation_config
        # Replies end where eval's and chat's do: at the template's end-of-turn marker too.
        config.eos_token_id = stop_token_ids(engine.processor, config.eos_token_id)
        # OpenAI's meaning: a request samples (at its temperature, else the model's) unless
        # it asks for temperature 0; transformers would decode greedily any temperature
        # of a model whose generation config does not sample.
        config.do_sample = cfg.sampling
        config.temperature, config.top_p = config.temperature or 1.0, config.top_p or 1.0
    return manager


def _add_error_handlers(app: FastAPI) -> None:
    """Every refusal and failure as one OpenAI-shaped error; a request that fails never
    stops the server."""

    def reply(status: int, message: str, kind: str) -> JSONResponse:
        return JSONResponse(error_body(status, message, kind), status_code=status)

    @app.exception_handler(RequestError)
    async def refused(_request: Request, err: RequestError):
        return reply(err.status, err.message, err.kind)

    @app.exception_handler(ValueError)  # transformers' own refusals (a prompt too long)
    async def invalid(_request: Request, err: ValueError):
        return reply(400, str(err), "invalid_request_error")

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, err: HTTPException):
        return reply(err.status_code, str(err.detail), "invalid_request_error")

    @app.exception_handler(RequestValidationError)
    async def malformed(_request: Request, err: RequestValidationError):
        return reply(400, f"malformed request: {err.errors()[0]['msg']}", "invalid_request_error")

    @app.exception_handler(EngineDeadError)
    async def dead(_request: Request, err: EngineDeadError):
        return reply(503, f"the model's process died: {err}", "server_error")

    @app.exception_handler(Exception)
    async def failed(_request: Request, _err: Exception):
        return reply(500, "internal error; the server's log has the cause", "server_error")


def serve(cfg: ServeConfig, environ: dict[str, str]) -> None:
    """Load the model and serve it until stopped (Ctrl-C, SIGTERM), or until the model's
    process dies."""
    import uvicorn  # the server's own loop, imported where it runs

    api_key = serving_key(cfg, environ)
    model_dir = model_directory(cfg)
    app = build_app(cfg, model_dir, api_key)
    manager = app.state.manager
    print(
        f"serving {cfg.name or cfg.model} at http://{cfg.host}:{cfg.port}/v1 "
        f"({'a bearer key required' if api_key else 'no key: this machine only'}; "
        f"conversation log: {cfg.log_dir or 'off'})",
        flush=True,
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning", timeout_notify=5)
    )

    async def stop_if_the_model_died() -> None:
        server.should_exit = server.should_exit or manager.is_dead

    server.config.callback_notify = stop_if_the_model_died
    server.run()
    if manager.is_dead:
        raise SystemExit("the model's process died (its error is above): the server stopped")
