"""The page encoding: exact layout on a hand-packed example, round trips within the stated bound, refusals."""

from __future__ import annotations

import base64
import zlib

import numpy as np
import pytest

from att_report.report.encode import (
    ERROR_BOUND, PREFIX_BOUND, QUANT_LEVELS, SCHEME_DESCRIPTION, SUM_BOUND, decode_rows, encode_rows, quantize,
)
from att_report.errors import InternalError
from synthetic import heavy_tail_attention, random_attention

# float32 holds q / 255 to about 3e-8; the bound itself is exact in float64.
FLOAT_SLACK = 1e-7


def raw_bytes(payload: str) -> bytes:
    """Undo base64 and zlib independently of decode_rows."""
    return zlib.decompress(base64.b64decode(payload))


def kept(matrices: np.ndarray, row_start: int, causal: bool) -> np.ndarray:
    """The matrices with the cells above the diagonal zeroed when causal (what the page keeps)."""
    if not causal:
        return matrices
    rows = np.arange(row_start, row_start + matrices.shape[1])
    return matrices * (rows[:, None] >= np.arange(matrices.shape[2])[None, :])


def test_hand_packed_causal_example() -> None:
    # One head, rows [1, 0] and [0.5, 0.5]. Row 1's running sums 127.5, 255 round (half to even) to 128, 255, so its
    # bytes are 128 and 255 - 128 = 127. Cells column by column: (0,0)=255, (1,0)=128, (1,1)=127.
    # Three cells kept, three non-zero (counts little-endian), no zero cell before any (gaps 0, 0, 0), the bytes.
    payload = encode_rows(np.array([[[1.0, 0.0], [0.5, 0.5]]], dtype=np.float32), 0, causal=True)
    assert raw_bytes(payload) == bytes([3, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 255, 128, 127])


def test_hand_packed_square_example_with_zeros() -> None:
    # Two heads of one row over three tokens, row_start 2: head 0 = [0, 1, 0], head 1 = [0.2, 0, 0.8].
    # Cells: head 0 columns 0,1,2 -> 0, 255, 0; head 1 -> round(51)=51, 0, round(204)=204.
    matrices = np.array([[[0.0, 1.0, 0.0]], [[0.2, 0.0, 0.8]]], dtype=np.float32)
    # Six cells; non-zero ones at positions 1, 3, 5: one zero cell before each (gaps 1, 1, 1), then the bytes.
    payload = encode_rows(matrices, 2, causal=False)
    assert raw_bytes(payload) == bytes([6, 0, 0, 0, 3, 0, 0, 0, 1, 1, 1, 255, 51, 204])


def test_hand_packed_long_gap_is_escaped() -> None:
    # One row over 300 tokens with all its weight on the last: 299 zero cells, then 255. A gap of 255 or more is
    # the byte 255 followed by the gap as 4 bytes little-endian (299 = 0x012B).
    row = np.zeros((1, 1, 300), dtype=np.float32)
    row[0, 0, 299] = 1.0
    payload = encode_rows(row, 0, causal=False)
    assert raw_bytes(payload) == bytes([0x2C, 0x01, 0, 0, 1, 0, 0, 0, 255, 0x2B, 0x01, 0, 0, 255])
    assert decode_rows(payload, 1, 0, 1, 300, causal=False)[0, 0, 299] == 1.0


def test_payload_is_ascii_base64_and_deterministic() -> None:
    matrices = random_attention(np.random.default_rng(3), 2, 40, causal=True)
    payload = encode_rows(matrices, 0, causal=True)
    assert payload == encode_rows(matrices.copy(), 0, causal=True)
    assert payload.isascii() and base64.b64encode(base64.b64decode(payload)).decode() == payload


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("row_start", "row_count"), [(0, 37), (0, 1), (10, 15), (36, 1), (20, 17)])
def test_round_trip_within_bound(causal: bool, row_start: int, row_count: int) -> None:
    full = random_attention(np.random.default_rng(row_start + row_count), 3, 37, causal)
    matrices = full[:, row_start:row_start + row_count]
    decoded = decode_rows(encode_rows(matrices, row_start, causal), 3, row_start, row_count, 37, causal)
    assert decoded.dtype == np.float32 and decoded.shape == (3, row_count, 37)
    assert np.abs(decoded - kept(matrices, row_start, causal)).max() <= ERROR_BOUND + FLOAT_SLACK


def test_decoded_values_are_bytes_over_255() -> None:
    matrices = random_attention(np.random.default_rng(5), 2, 30, causal=False)
    decoded = decode_rows(encode_rows(matrices, 0, False), 2, 0, 30, 30, False).astype(np.float64)
    steps = decoded * QUANT_LEVELS
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-4)
    # error diffusion by hand: byte j = round(255 * sum of w up to j) - round(255 * sum up to j - 1)
    expected = np.zeros_like(steps)
    for head in range(2):
        for row in range(30):
            carried = 0.0
            for key in range(30):
                expected[head, row, key] = round(255 * matrices[head, row, key].astype(np.float64) + carried)
                carried += 255 * matrices[head, row, key].astype(np.float64) - expected[head, row, key]
    np.testing.assert_array_equal(np.round(steps), expected)


def test_small_weights_keep_their_mass() -> None:
    # At 600 tokens most weights lie below 1/510, where plain rounding gives 0; error diffusion keeps every prefix
    # sum of a row within 1/510, so each 64-key block and each row keeps its mass within 1/255.
    matrices = heavy_tail_attention(np.random.default_rng(4), 2, 600)
    assert (matrices[:, -1, :] < 1 / 510).mean() > 0.9 and (np.where(matrices < 1 / 510, matrices, 0).sum(-1) > 0.2).any()
    decoded = decode_rows(encode_rows(matrices, 0, True), 2, 0, 600, 600, True).astype(np.float64)
    truth = matrices.astype(np.float64)
    assert np.abs(decoded - truth).max() <= ERROR_BOUND + FLOAT_SLACK
    assert np.abs(np.cumsum(decoded, -1) - np.cumsum(truth, -1)).max() <= PREFIX_BOUND + 1e-6
    blocks = np.add.reduceat(decoded - truth, np.arange(0, 600, 64), axis=-1)
    assert np.abs(blocks).max() <= SUM_BOUND + 1e-6
    assert np.abs(decoded.sum(-1) - 1).max() <= SUM_BOUND + 1e-6


def test_quantize_keeps_zeros_and_bytes_in_range() -> None:
    rows = np.array([[0.0, 0.25, 0.0, 0.0, 0.75, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(quantize(rows), [[0, 64, 0, 0, 191, 0], [255, 0, 0, 0, 0, 0]])


def test_edges_zero_and_one_are_exact() -> None:
    matrices = np.zeros((2, 4, 4), dtype=np.float32)
    matrices[0, :, 0] = 1.0
    matrices[1] = np.eye(4)
    for causal in (True, False):
        decoded = decode_rows(encode_rows(matrices, 0, causal), 2, 0, 4, 4, causal)
        np.testing.assert_array_equal(decoded, matrices)


def test_causal_drops_values_above_the_diagonal() -> None:
    matrices = np.full((1, 3, 3), 0.25, dtype=np.float32)
    decoded = decode_rows(encode_rows(matrices, 0, True), 1, 0, 3, 3, True)
    expected = np.array([[0.25, 0, 0], [0.25, 0.25, 0], [0.25, 0.25, 0.25]])
    assert np.abs(decoded[0] - expected).max() <= ERROR_BOUND
    assert len(raw_bytes(encode_rows(matrices, 0, True))) == 8 + 6 + 6  # 6 kept cells: two counts, six gaps, six values


def test_tiny_float_overshoot_is_clipped() -> None:
    matrices = np.array([[[1.0000001, -0.0000001]]], dtype=np.float32)
    np.testing.assert_array_equal(decode_rows(encode_rows(matrices, 0, False), 1, 0, 1, 2, False), [[[1.0, 0.0]]])


@pytest.mark.parametrize("bad", [np.nan, 1.5, -0.2, np.inf])
def test_refuses_values_that_are_not_weights(bad: float) -> None:
    matrices = np.zeros((1, 2, 2), dtype=np.float32)
    matrices[0, 1, 0] = bad
    with pytest.raises(InternalError, match=r"expected weights in \[0, 1\]"):
        encode_rows(matrices, 0, causal=True)


def test_refuses_rows_outside_the_tokens_and_wrong_shapes() -> None:
    with pytest.raises(InternalError, match="do not lie within the 4 tokens"):
        encode_rows(np.zeros((1, 3, 4), dtype=np.float32), 2, causal=True)
    with pytest.raises(InternalError, match="expected \\(heads, rows, tokens\\)"):
        encode_rows(np.zeros((3, 4), dtype=np.float32), 0, causal=True)


def test_decode_refuses_a_payload_of_another_shape() -> None:
    payload = encode_rows(random_attention(np.random.default_rng(1), 2, 10, True), 0, True)
    with pytest.raises(InternalError, match="does not fit 3 heads"):
        decode_rows(payload, 3, 0, 10, 10, True)
    with pytest.raises(InternalError, match="not base64 zlib data"):
        decode_rows("not a payload!", 2, 0, 10, 10, True)


def test_sparse_attention_is_compact() -> None:
    # Rows that, like a real model's, put their weight on a few tokens (sink, previous, self, one random earlier
    # token): the packed lower triangle must stay well under the page's target of 0.1 bytes per stored value.
    rng = np.random.default_rng(7)
    heads, tokens = 2, 400
    matrices = np.zeros((heads, tokens, tokens), dtype=np.float32)
    for head in range(heads):
        for row in range(tokens):
            keys = [0, max(row - 1, 0), row, int(rng.integers(0, row + 1))]
            np.add.at(matrices[head, row], keys, rng.dirichlet(np.ones(4)).astype(np.float32))
    stored = heads * tokens * (tokens + 1) // 2
    assert len(encode_rows(matrices, 0, True)) / stored < 0.07


def test_scheme_description_states_the_bound() -> None:
    assert "1/255" in SCHEME_DESCRIPTION and "error diffusion" in SCHEME_DESCRIPTION
    assert ERROR_BOUND == SUM_BOUND == pytest.approx(1 / QUANT_LEVELS) and PREFIX_BOUND == pytest.approx(0.5 / QUANT_LEVELS)
