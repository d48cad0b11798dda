"""The two servers aimesh is compared with, each one uvicorn process serving a skops file.

- ``fastapi``: what a typical user writes. Pydantic models of the OIP v2 shape, one route
  that calls ``predict_proba`` on ``np.asarray(data).reshape(shape)`` and returns OIP JSON.
  The route is ``async def`` by default (the model runs inline on the event loop, which is
  the faster of the two for a model this small); ``--route sync`` makes it a ``def`` route,
  run in FastAPI's thread pool.
- ``bare``: the practical ceiling of Python HTTP serving here. A raw ASGI callable with
  msgspec decoding and encoding and ``predict_proba`` inline, one request at a time.

Both answer ``label`` and ``probabilities``, as aimesh does, so the bodies are alike.
Run: ``python bench/_baselines.py {fastapi,bare} --model FILE --port PORT``.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import uvicorn
from _models import INFER_PATH, MODEL_NAME, load_estimator
from fastapi import FastAPI
from pydantic import BaseModel

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class TensorIn(BaseModel):
    """One input tensor of the OIP v2 request."""

    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class InferRequest(BaseModel):
    """The OIP v2 inference request, as a FastAPI user would declare it."""

    inputs: list[TensorIn]
    id: str | None = None


class TensorOut(BaseModel):
    """One output tensor of the OIP v2 response."""

    name: str
    shape: list[int]
    datatype: str
    data: list[int] | list[float]


class InferResponse(BaseModel):
    """The OIP v2 inference response."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[TensorOut]


def fastapi_app(model: Any, *, sync_route: bool = False) -> FastAPI:
    """The FastAPI baseline: pydantic in, ``predict_proba``, pydantic out."""
    app = FastAPI()
    classes = model.classes_

    def predict(request: InferRequest) -> InferResponse:
        tensor = request.inputs[0]
        x = np.asarray(tensor.data, dtype=np.float64).reshape(tensor.shape)
        proba = model.predict_proba(x)
        label = classes.take(proba.argmax(axis=1))
        return InferResponse(
            model_name=MODEL_NAME,
            model_version="1",
            id=request.id,
            outputs=[
                TensorOut(
                    name="label", shape=list(label.shape), datatype="INT64", data=label.tolist()
                ),
                TensorOut(
                    name="probabilities",
                    shape=list(proba.shape),
                    datatype="FP64",
                    data=proba.ravel().tolist(),
                ),
            ],
        )

    if sync_route:

        @app.post(INFER_PATH, response_model=InferResponse)
        def infer_sync(request: InferRequest) -> InferResponse:
            return predict(request)
    else:

        @app.post(INFER_PATH, response_model=InferResponse)
        async def infer_async(request: InferRequest) -> InferResponse:
            return predict(request)

    return app


class _TensorIn(msgspec.Struct):
    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class _RequestIn(msgspec.Struct):
    inputs: list[_TensorIn]
    id: str | None = None


class _TensorOut(msgspec.Struct):
    name: str
    shape: list[int]
    datatype: str
    data: list[int] | list[float]


class _ResponseOut(msgspec.Struct, omit_defaults=True):
    model_name: str
    outputs: list[_TensorOut]
    model_version: str | None = None
    id: str | None = None


_JSON_HEADERS = [(b"content-type", b"application/json")]


def bare_app(model: Any) -> ASGIApp:
    """The ceiling: raw ASGI, msgspec both ways, the model called inline."""
    decoder = msgspec.json.Decoder(_RequestIn)
    encoder = msgspec.json.Encoder()
    classes = model.classes_

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != INFER_PATH or scope["method"] != "POST":
            await _answer(send, 404, b'{"error":"not found"}')
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        try:
            request = decoder.decode(b"".join(chunks))
        except msgspec.DecodeError as exc:
            await _answer(send, 400, encoder.encode({"error": str(exc)}))
            return
        tensor = request.inputs[0]
        x = np.asarray(tensor.data, dtype=np.float64).reshape(tensor.shape)
        proba = model.predict_proba(x)
        label = classes.take(proba.argmax(axis=1))
        body = encoder.encode(
            _ResponseOut(
                model_name=MODEL_NAME,
                model_version="1",
                id=request.id,
                outputs=[
                    _TensorOut("label", list(label.shape), "INT64", label.tolist()),
                    _TensorOut("probabilities", list(proba.shape), "FP64", proba.ravel().tolist()),
                ],
            )
        )
        await _answer(send, 200, body)

    return app


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    """Serve one baseline until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["fastapi", "bare"])
    parser.add_argument("--model", type=Path, required=True, help="a skops file")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--route", choices=["async", "sync"], default="async")
    args = parser.parse_args()
    model = load_estimator(args.model)
    app: Any
    if args.kind == "fastapi":
        app = fastapi_app(model, sync_route=args.route == "sync")
    else:
        app = bare_app(model)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        workers=1,
        loop="uvloop",
        http="httptools",
        lifespan="on" if args.kind == "fastapi" else "off",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
