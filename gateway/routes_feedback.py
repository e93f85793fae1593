"""Feedback from the digit page: a person's correction becomes a training example in a versioned dataset.

Each click appends the preprocessed 28x28 image (what was sent to predict) and the label the person gave, in
mnist_clean.py's schema, to a dataset (``mnist_feedback`` by default); clicks that arrive together are written as
one append (one new Lance version), so a fast clicker does not make hundreds of versions. A pipeline can be
triggered by the new versions (pipelines/mnist_retrain.yaml).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import numpy as np
import pyarrow as pa
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from ai_platform.core import arrow_ipc
from ai_platform.core.errors import PlatformError
from ai_platform.core.names import validate_name
from ai_platform.core.views import ERRORS
from ai_platform.protos.aiplatform.v1 import storage_pb2 as pb
from ai_platform.sdk import digits_schema
from gateway.errors import from_platform

router = APIRouter(tags=["feedback"])
PIXELS = 784
BATCH_WINDOW_S = 0.25  # clicks within this long of the first are written together
SCHEMA = digits_schema("digit page feedback")


class FeedbackRequest(BaseModel):
    """A correction; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    image: list[Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]] = Field(
        min_length=PIXELS, max_length=PIXELS, description="the 28x28 pixels (0..1, row by row) that were predicted")
    label: int = Field(ge=0, le=9, description="what the digit really is")
    dataset: str = Field("mnist_feedback", description="the dataset the correction is appended to")
    prediction: int | None = Field(None, ge=0, le=9, description="what the model said (kept in the log only)")


class FeedbackView(BaseModel):
    dataset: str
    version: int = Field(description="the dataset version that holds this correction")
    rows: int = Field(description="corrections in the dataset now")
    batched: int = Field(description="corrections written in the same append")


class FeedbackWriter:
    """Collects corrections per dataset for BATCH_WINDOW_S, then appends them in one write."""

    def __init__(self) -> None:
        self._pending: dict[str, list[tuple[np.ndarray, int, asyncio.Future]]] = {}
        self._lock = asyncio.Lock()

    async def add(self, request: Request, dataset: str, image: np.ndarray, label: int) -> FeedbackView:
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        pending = self._pending.setdefault(dataset, [])
        pending.append((image, label, future))
        if len(pending) == 1:
            asyncio.get_running_loop().call_later(BATCH_WINDOW_S, lambda: asyncio.ensure_future(
                self._flush(request, dataset)))
        return await future

    async def _flush(self, request: Request, dataset: str) -> None:
        batch = self._pending.pop(dataset, [])
        if not batch:
            return
        async with self._lock:  # one append at a time: each is one commit, in order
            try:
                info = await self._append(request, dataset, batch)
                view = FeedbackView(dataset=dataset, version=info.version, rows=info.num_rows, batched=len(batch))
                for *_, future in batch:
                    if not future.done():
                        future.set_result(view)
            except Exception as exc:  # noqa: BLE001 - every waiting click gets the error
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)

    @staticmethod
    async def _append(request: Request, dataset: str, batch: list) -> pb.TableInfo:
        upstreams = request.app.state.upstreams
        images = np.stack([image for image, _, _ in batch])
        table = pa.table([pa.FixedSizeListArray.from_arrays(pa.array(images.reshape(-1)), PIXELS),
                          pa.array([label for _, label, _ in batch], pa.int64()),
                          pa.array(["train"] * len(batch))], schema=SCHEMA)

        async def requests():  # noqa: ANN202 - an async iterator of WriteTableRequest
            yield pb.WriteTableRequest(header=pb.WriteHeader(kind=pb.DATASET, name=dataset, mode=pb.APPEND))
            yield pb.WriteTableRequest(chunk=pb.ArrowChunk(arrow_ipc=arrow_ipc.encode(SCHEMA, table.to_batches())))
            yield pb.WriteTableRequest(commit=pb.WriteCommit())

        return await upstreams.call("storage", upstreams.storage.WriteTable(requests(), timeout=upstreams.timeout_s))


@router.post("/api/v1/feedback", status_code=201, response_model=FeedbackView, responses=ERRORS,
             summary="A correction from the digit page: the image and its true label, appended to a dataset")
async def add_feedback(request: Request, body: FeedbackRequest) -> FeedbackView:
    try:
        dataset = validate_name(body.dataset, "dataset name")
    except PlatformError as exc:
        raise from_platform(exc) from None
    pixels = np.rint(np.asarray(body.image, dtype=np.float32) * 255).astype(np.uint8)
    writer = getattr(request.app.state, "feedback", None)
    if writer is None:
        writer = request.app.state.feedback = FeedbackWriter()
    return await writer.add(request, dataset, pixels, body.label)
