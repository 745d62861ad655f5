"""The batched TV-L1 (mer/preprocess/motion/tvl1_batched.py) is scikit-image's optical_flow_tvl1, pair by pair, bit for
bit."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.registration import optical_flow_tvl1

from mer.preprocess.motion.flow import estimate_flows
from mer.preprocess.motion.tvl1_batched import tvl1_flows

SETTINGS = dict(attachment=15.0, tightness=0.3, num_warp=2, num_iter=5, tol=1e-4, prefilter=False)  # the config's


def texture(size: int, seed: int = 0) -> np.ndarray:
    image = ndi.gaussian_filter(np.random.default_rng(seed).random((size, size)), 2.5)
    return ((image - image.min()) / (image.max() - image.min())).astype(np.float32)


def moved(image: np.ndarray, count: int) -> np.ndarray:
    return np.stack([ndi.shift(image, (0.15 * k, -0.1 * k), order=1, mode="reflect") for k in range(1, count + 1)])


@pytest.mark.parametrize("settings", [
    SETTINGS,
    dict(SETTINGS, prefilter=True),
    dict(SETTINGS, num_warp=4, num_iter=6, tol=3e-2),  # pairs converge after different warps and leave the stack
])
def test_every_pair_is_the_flow_of_its_own_call(settings):
    onset = texture(72)
    frames = moved(onset, 5).astype(np.float32)
    frames[2] = texture(72, seed=4)  # one pair far from the others
    references = np.broadcast_to(onset, frames.shape)
    expected = np.stack([optical_flow_tvl1(r, m, dtype=np.float32, **settings) for r, m in zip(references, frames)])
    batched = tvl1_flows(references, frames, **settings)
    assert batched.dtype == np.float32 and batched.shape == expected.shape
    np.testing.assert_array_equal(batched, expected)


def test_references_of_their_own_and_float64_inputs():
    references = np.stack([texture(40, seed=s) for s in range(3)]).astype(np.float64)
    movings = np.stack([moved(r, 1)[0] for r in references])
    expected = np.stack([optical_flow_tvl1(r, m, dtype=np.float32, **SETTINGS) for r, m in zip(references, movings)])
    np.testing.assert_array_equal(tvl1_flows(references, movings, **SETTINGS), expected)
    assert tvl1_flows(references[:0], movings[:0]).shape == (0, 2, 40, 40)
    with pytest.raises(ValueError, match="float"):
        tvl1_flows(references.astype(np.uint8), movings.astype(np.uint8))


def test_estimate_flows_uses_it_with_opencvs_axis_order():
    onset = texture(48)
    frames = moved(onset, 3).astype(np.float32)
    flows = estimate_flows(onset, frames, "tvl1_skimage")
    expected = np.stack([optical_flow_tvl1(onset, f, dtype=np.float32, **SETTINGS) for f in frames])
    np.testing.assert_array_equal(flows, expected[:, ::-1].transpose(0, 2, 3, 1))
