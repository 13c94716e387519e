"""Update compression: round trips, wire sizes and error feedback."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, RecordDict

from flowerbed_training.common import compression
from flowerbed_training.common.compression import CompressionSettings

SHAPES = [(64, 30), (64,), (2, 64), (2,)]


def _update(seed: int = 0, scale: float = 0.01) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, scale, s).astype(np.float32) for s in SHAPES]


def _nbytes_dense(arrays: list[np.ndarray]) -> int:
    return ArrayRecord({str(i): Array(a) for i, a in enumerate(arrays)}).count_bytes()


def test_none_round_trip_is_exact() -> None:
    update = _update()
    decoded = compression.decode(compression.encode(update, CompressionSettings("none", 0.05)), SHAPES)
    for a, b in zip(update, decoded, strict=True):
        np.testing.assert_array_equal(a, b)


def test_int8_round_trip_error_is_within_half_a_step_per_tensor() -> None:
    update = _update()
    update[1] *= 100  # tensors of very different scales keep their own ranges
    decoded = compression.decode(compression.encode(update, CompressionSettings("int8", 0.05)), SHAPES)
    for original, restored in zip(update, decoded, strict=True):
        assert restored.shape == original.shape
        step = (original.max() - original.min()) / 255
        assert np.abs(original - restored).max() <= step / 2 + 1e-6


def test_int8_constant_tensor_survives() -> None:
    update = [np.full((3, 3), 0.25, np.float32), np.zeros(4, np.float32)]
    decoded = compression.decode(compression.encode(update, CompressionSettings("int8", 0.05)), [(3, 3), (4,)])
    np.testing.assert_allclose(decoded[0], 0.25)
    np.testing.assert_array_equal(decoded[1], 0)


def test_int8_payload_is_about_a_quarter_of_dense() -> None:
    update = _update()
    payload = compression.encode(update, CompressionSettings("int8", 0.05))
    assert compression.payload_nbytes(payload) < 0.3 * _nbytes_dense(update)


def test_topk_keeps_exactly_the_largest_entries_of_each_tensor() -> None:
    update = _update()
    settings = CompressionSettings("topk", topk_fraction=0.1)
    decoded = compression.decode(compression.encode(update, settings), SHAPES)
    for original, restored in zip(update, decoded, strict=True):
        k = int(np.ceil(0.1 * original.size))
        kept = restored != 0
        assert kept.sum() == k
        np.testing.assert_array_equal(restored[kept], original[kept])
        assert np.abs(original[kept]).min() >= np.abs(original[~kept]).max()


def test_topk_payload_shrinks_with_the_fraction() -> None:
    update = _update()
    small = compression.payload_nbytes(compression.encode(update, CompressionSettings("topk", 0.01)))
    large = compression.payload_nbytes(compression.encode(update, CompressionSettings("topk", 0.1)))
    assert small < large < 0.3 * _nbytes_dense(update)


def test_error_feedback_eventually_transmits_the_whole_update() -> None:
    # One update, then silence: with error feedback the residual is sent over
    # the following rounds, so the sum of what arrived converges to the update.
    settings = CompressionSettings("topk", topk_fraction=0.05)
    update = _update(seed=3)
    zeros = [np.zeros_like(u) for u in update]
    received = [np.zeros_like(u) for u in update]
    residual = None
    for round_update in [update] + [zeros] * 30:
        payload, residual = compression.encode_with_feedback(round_update, residual, settings)
        received = [r + d for r, d in zip(received, compression.decode(payload, SHAPES), strict=True)]
    for original, total, left in zip(update, received, residual, strict=True):
        np.testing.assert_allclose(total, original, atol=1e-7)
        assert np.abs(left).max() < 1e-7


def test_error_feedback_residual_is_what_was_not_sent() -> None:
    settings = CompressionSettings("int8", 0.05)
    update = _update(seed=4)
    payload, residual = compression.encode_with_feedback(update, None, settings)
    sent = compression.decode(payload, SHAPES)
    for u, s, r in zip(update, sent, residual, strict=True):
        np.testing.assert_allclose(s + r, u, atol=1e-7)
        assert np.abs(r).max() > 0  # int8 is lossy, so something is carried over


def test_encode_update_keeps_the_residual_in_state_across_rounds() -> None:
    state = RecordDict()
    settings = CompressionSettings("topk", 0.05)
    names = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    update = dict(zip(names, _update(seed=5), strict=True))
    like = {n: np.zeros(s, np.float32) for n, s in zip(names, SHAPES, strict=True)}

    first = compression.encode_update(update, settings, state)
    assert compression.is_compressed(first)
    zero_update = {n: np.zeros_like(a) for n, a in update.items()}
    second = compression.decode_update(compression.encode_update(zero_update, settings, state), like)

    # The second round had nothing new, yet sent the largest leftovers of the first.
    decoded_first = compression.decode_update(first, ArrayRecord({n: Array(a) for n, a in like.items()}))
    assert list(second) == names
    for name in names:
        assert np.abs(second[name]).max() > 0
        np.testing.assert_array_equal(second[name][decoded_first[name] != 0], 0)


def test_decode_rejects_wrong_shapes() -> None:
    payload = compression.encode(_update(), CompressionSettings("int8", 0.05))
    with pytest.raises(ValueError, match="ranges for 4 tensors"):
        compression.decode(payload, SHAPES[:3])
