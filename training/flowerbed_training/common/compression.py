"""Update compression: 8-bit quantization and top-k sparsification with error feedback.

A site sends its model UPDATE (trained weights minus the global weights it
received), not its weights: updates are small and centred on zero, so they
quantize well and are naturally sparse. Both codecs are lossy; the part of the
update that a round could not send is kept per site as a residual and added
to the next round's update (error feedback, Seide et al. 2014; Karimireddy et
al. 2019), so nothing is lost for good, only delayed.

Payloads pack all tensors of an update into a few flat arrays, because every
array on the wire carries a NumPy header: the receiver always knows the
shapes (it sent the global model), so the payload does not repeat them.

Both ends of the format live here: the site encodes (`arrays_to_send`, keeping its
residual in its state), the server decodes (`decode_update`, against the model the
site trained from).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from flowerbed_training.common.protocol import (
    DENSE_VALUES,
    INT8_CODES,
    INT8_RANGES,
    RESIDUAL,
    TOPK_INDICES,
    TOPK_VALUES,
    to_record,
)
from flowerbed_training.common.run_config import RunConfig

_LEVELS = 255  # uint8 codes 0..255


@dataclass(frozen=True)
class CompressionSettings:
    """How a site encodes its update: run config `compression` (validated there) and its top-k share."""

    method: str  # none | int8 | topk
    topk_fraction: float  # topk: share of each tensor's entries sent, in (0, 1]

    @staticmethod
    def of(config: RunConfig) -> CompressionSettings:
        return CompressionSettings(config.compression, config.compression_topk_fraction)


Payload = dict[str, np.ndarray]


def encode(update: Sequence[np.ndarray], settings: CompressionSettings) -> Payload:
    """Encode a list of float arrays into a compact payload (lossy unless method is none)."""
    flat = [np.asarray(a, dtype=np.float32).ravel() for a in update]
    if settings.method == "int8":
        return _encode_int8(flat)
    if settings.method == "topk":
        return _encode_topk(flat, settings.topk_fraction)
    return {DENSE_VALUES: np.concatenate(flat) if flat else np.zeros(0, np.float32)}


def decode(payload: Mapping[str, np.ndarray], shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """Invert `encode`, given the shapes of the encoded arrays in order."""
    sizes = [math.prod(s) for s in shapes]
    if INT8_CODES in payload:
        flat = _decode_int8(payload, sizes)
    elif TOPK_INDICES in payload:
        flat = np.zeros(sum(sizes), np.float32)
        flat[payload[TOPK_INDICES].astype(np.int64)] = payload[TOPK_VALUES]
    elif DENSE_VALUES in payload:
        flat = np.asarray(payload[DENSE_VALUES], dtype=np.float32)
    else:
        raise ValueError(f"not a compressed payload: keys {sorted(payload)}")
    if flat.size != sum(sizes):
        raise ValueError(f"payload holds {flat.size} values, the shapes need {sum(sizes)}")
    pieces = np.split(flat, np.cumsum(sizes)[:-1]) if sizes else []
    return [p.reshape(s) for p, s in zip(pieces, shapes, strict=True)]


def encode_with_feedback(
    update: Sequence[np.ndarray],
    residual: Sequence[np.ndarray] | None,
    settings: CompressionSettings,
) -> tuple[Payload, list[np.ndarray]]:
    """Encode update + residual; return the payload and the part it did not carry."""
    shapes = [np.shape(a) for a in update]
    corrected = [np.asarray(u, np.float32) for u in update]
    if residual is not None:
        corrected = [u + r for u, r in zip(corrected, residual, strict=True)]
    payload = encode(corrected, settings)
    sent = decode(payload, shapes)
    return payload, [c - s for c, s in zip(corrected, sent, strict=True)]


def payload_nbytes(payload: Mapping[str, np.ndarray]) -> int:
    """Bytes the payload takes on the wire (Flower's count of the serialized record)."""
    return ArrayRecord({k: Array(v) for k, v in payload.items()}).count_bytes()


# --- Flower glue: an update as the app sends it (named arrays in an ArrayRecord) ---


def is_compressed(record: ArrayRecord) -> bool:
    return any(k in record for k in (INT8_CODES, TOPK_INDICES, DENSE_VALUES))


def arrays_to_send(config: RunConfig, trained: Mapping[str, np.ndarray], start: Mapping[str, np.ndarray],
                   state: RecordDict) -> ArrayRecord:
    """Site side, the reply's ARRAYS: the trained model, or its update (trained - start, the model
    the site received) compressed as run config `compression` asks."""
    if config.compression == "none":
        return to_record(trained)
    update = {k: trained[k] - start[k] for k in trained}
    return encode_update(update, CompressionSettings.of(config), state)


def encode_update(
    update: Mapping[str, np.ndarray], settings: CompressionSettings, state: RecordDict
) -> ArrayRecord:
    """Site side: encode this site's update, keeping the error-feedback residual in `state`."""
    names = list(update)
    previous = state.array_records.get(RESIDUAL)
    residual = None
    if previous is not None and list(previous.keys()) == names:
        residual = previous.to_numpy_ndarrays()
    payload, residual = encode_with_feedback([update[n] for n in names], residual, settings)
    state.array_records[RESIDUAL] = ArrayRecord(
        {n: Array(r) for n, r in zip(names, residual, strict=True)}
    )
    return ArrayRecord({k: Array(v) for k, v in payload.items()})


def decode_update(
    record: ArrayRecord, like: Mapping[str, np.ndarray] | ArrayRecord
) -> dict[str, np.ndarray]:
    """Server side: decode a site's update; `like` (the global arrays sent) gives names and shapes."""
    if isinstance(like, ArrayRecord):
        shapes = {k: tuple(a.shape) for k, a in like.items()}
    else:
        shapes = {k: np.shape(a) for k, a in like.items()}
    payload = {k: a.numpy() for k, a in record.items()}
    arrays = decode(payload, list(shapes.values()))
    return dict(zip(shapes, arrays, strict=True))


def _encode_int8(flat: list[np.ndarray]) -> Payload:
    # Per-tensor min/max: layers differ in scale by orders of magnitude, and
    # one shared range would flatten the small ones to zero.
    ranges = np.zeros((len(flat), 2), np.float32)
    codes = []
    for i, values in enumerate(flat):
        low = float(values.min()) if values.size else 0.0
        high = float(values.max()) if values.size else 0.0
        step = (high - low) / _LEVELS
        ranges[i] = (low, step)
        scaled = (values - low) / step if step > 0 else np.zeros_like(values)
        codes.append(np.clip(np.rint(scaled), 0, _LEVELS).astype(np.uint8))
    return {INT8_CODES: np.concatenate(codes) if codes else np.zeros(0, np.uint8), INT8_RANGES: ranges}


def _decode_int8(payload: Mapping[str, np.ndarray], sizes: list[int]) -> np.ndarray:
    codes, ranges = payload[INT8_CODES], payload[INT8_RANGES]
    if len(ranges) != len(sizes):
        raise ValueError(f"payload has ranges for {len(ranges)} tensors, the shapes name {len(sizes)}")
    low = np.repeat(ranges[:, 0], sizes)
    step = np.repeat(ranges[:, 1], sizes)
    return (low + codes.astype(np.float32) * step).astype(np.float32)


def _encode_topk(flat: list[np.ndarray], fraction: float) -> Payload:
    # Top-k per tensor, not over the whole model: a global top-k starves the
    # layers whose updates are small in absolute terms (e.g. biases).
    indices, values, offset = [], [], 0
    for tensor in flat:
        k = min(tensor.size, max(1, math.ceil(fraction * tensor.size)))
        if tensor.size:
            top = np.argpartition(np.abs(tensor), tensor.size - k)[tensor.size - k :]
            top.sort()
            indices.append((top + offset).astype(np.int32))
            values.append(tensor[top])
        offset += tensor.size
    return {
        TOPK_INDICES: np.concatenate(indices) if indices else np.zeros(0, np.int32),
        TOPK_VALUES: np.concatenate(values) if values else np.zeros(0, np.float32),
    }
