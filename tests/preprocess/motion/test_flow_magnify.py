"""Optical flow, warping, motion maps and magnification on textures with known sub-pixel motion."""

import numpy as np
import pytest

from mer.preprocess.motion.flow import estimate_flow, estimate_flows, resolve_params, warp
from mer.preprocess.magnification import MAGNIFIERS, get_magnifier
from mer.preprocess.magnification.lagrangian import lagrangian
from mer.preprocess.magnification.none import no_magnification
from mer.preprocess.motion.maps import MotionSpec, flow_to_map, optical_strain, resize_flows

SIZE = 96


def periodic_texture(seed: int = 0) -> np.ndarray:
    """A smooth periodic random RGB texture in [0.15, 0.85], (SIZE, SIZE, 3) float32."""
    noise = np.random.default_rng(seed).normal(size=(3, SIZE, SIZE))
    freq_y, freq_x = np.fft.fftfreq(SIZE)[:, None], np.fft.fftfreq(SIZE)[None, :]
    lowpass = np.exp(-2 * (np.pi * 2.0) ** 2 * (freq_x**2 + freq_y**2))  # Gaussian blur, sigma 2 px
    smooth = np.real(np.fft.ifft2(np.fft.fft2(noise) * lowpass))
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (0.15 + 0.7 * smooth).transpose(1, 2, 0).astype(np.float32)


@pytest.fixture(scope="module")
def texture() -> np.ndarray:
    return periodic_texture()


def shifted(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """The periodic image's content moved by exactly (+dx, +dy) (a Fourier phase ramp, no resampling kernel).

    OpenCV's own interpolation would not do: its bicubic kernel misplaces sub-pixel positions, and OpenCV's
    TV-L1, which warps with it, would then look exact on motion it reads 15-30 % short in reality.
    """
    freq_y, freq_x = np.fft.fftfreq(SIZE)[:, None, None], np.fft.fftfreq(SIZE)[None, :, None]
    ramp = np.exp(-2j * np.pi * (freq_x * dx + freq_y * dy))
    return np.real(np.fft.ifft2(np.fft.fft2(image, axes=(0, 1)) * ramp, axes=(0, 1))).astype(np.float32)


def interior(array: np.ndarray, margin: int = 12) -> np.ndarray:
    return array[..., margin:-margin, margin:-margin, :]


@pytest.mark.parametrize("dx, dy", [(0.2, -0.1), (0.1, 0.25), (1.5, 0.7)])
def test_tvl1_skimage_recovers_subpixel_shift(texture, dx, dy):
    flow = estimate_flow(texture, shifted(texture, dx, dy), "tvl1_skimage")
    assert flow.shape == (SIZE, SIZE, 2) and flow.dtype == np.float32
    mean = interior(flow).reshape(-1, 2).mean(axis=0)
    np.testing.assert_allclose(mean, [dx, dy], atol=0.02)


@pytest.mark.parametrize("method", ["tvl1", "tvl1_skimage", "farneback", "dis"])
def test_every_method_follows_the_same_convention(texture, method):
    flow = estimate_flow(texture, shifted(texture, 2.0, -1.0), method)
    np.testing.assert_allclose(np.median(interior(flow).reshape(-1, 2), axis=0), [2.0, -1.0], atol=0.3)


def test_uint8_and_gray_inputs_give_the_same_flow_as_float(texture):
    moved = shifted(texture, 0.5, 0.0)
    as_uint8 = [np.clip(np.rint(image * 255), 0, 255).astype(np.uint8) for image in (texture, moved)]
    flow_float = estimate_flow(texture, moved, "tvl1")
    flow_uint8 = estimate_flow(*as_uint8, "tvl1")
    flow_gray = estimate_flow(texture.mean(axis=-1), moved.mean(axis=-1), "tvl1")
    assert interior(flow_float)[..., 0].mean() > 0.4
    assert np.abs(interior(flow_float - flow_uint8)).mean() < 0.02
    assert np.abs(interior(flow_float - flow_gray)).mean() < 0.02


def test_estimate_flows_one_source_many_targets(texture):
    targets = np.stack([shifted(texture, s, 0) for s in (0.0, 0.5, 1.0)])
    flows = estimate_flows(texture, targets, "tvl1_skimage")
    assert flows.shape == (3, SIZE, SIZE, 2)
    np.testing.assert_allclose(interior(flows)[..., 0].mean(axis=(1, 2)), [0.0, 0.5, 1.0], atol=0.03)


def test_unknown_method_and_parameter_are_rejected():
    with pytest.raises(ValueError, match="unknown optical-flow method 'lk'"):
        resolve_params("lk")
    with pytest.raises(ValueError, match="unknown tvl1 flow parameter"):
        resolve_params("tvl1", {"lamda": 0.2})
    assert resolve_params("tvl1", {"lambda": 0.2})["lambda"] == 0.2


def test_warp_samples_at_position_plus_flow(texture):
    flow = np.zeros((SIZE, SIZE, 2), np.float32)
    flow[..., 0], flow[..., 1] = 3.0, -2.0
    warped = warp(texture, flow)
    # out[y, x] = image[y - 2, x + 3]
    np.testing.assert_allclose(warped[10:-10, 10:-10], texture[8:-12, 13:-7], atol=1e-6)


def test_warp_undoes_the_estimated_flow(texture):
    moved = shifted(texture, 0.3, -0.2)
    flow = estimate_flow(texture, moved, "tvl1_skimage")
    error_before = np.abs(interior(moved - texture)).mean()
    error_after = np.abs(interior(warp(moved, flow[None])[0] - texture)).mean()
    assert error_after < 0.35 * error_before


def test_warp_is_exact_on_ramps_and_batched(texture):
    rng = np.random.default_rng(1)
    flows = rng.uniform(-2, 2, (2, 3, SIZE, SIZE, 2)).astype(np.float32)
    warped = warp(texture, flows)
    assert warped.shape == (2, 3, SIZE, SIZE, 3)
    np.testing.assert_allclose(warp(texture, flows[1, 2]), warped[1, 2], atol=1e-6)
    # Cubic interpolation reproduces a linear ramp exactly, at float precision for any fractional offset.
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    ramp = 0.01 * xs + 0.002 * ys
    offset = np.zeros((SIZE, SIZE, 2), np.float32)
    offset[..., 0], offset[..., 1] = 0.37, -0.21
    np.testing.assert_allclose(warp(ramp, offset)[4:-4, 4:-4], (ramp + 0.01 * 0.37 - 0.002 * 0.21)[4:-4, 4:-4],
                               atol=1e-6)


def test_magnitude_map_and_resize_rescale_values():
    flows = np.zeros((2, 64, 64, 2), np.float32)
    flows[0, ..., 0], flows[0, ..., 1] = 3.0, 4.0
    maps = flow_to_map(flows, "magnitude", 32)
    assert maps.shape == (2, 1, 32, 32)
    np.testing.assert_allclose(maps[0], 2.5, atol=1e-5)  # 5 px at 64 = 2.5 px at 32
    np.testing.assert_allclose(maps[1], 0.0)
    assert resize_flows(flows, 64) is flows


def test_uv_strain_of_a_linear_flow():
    ys, xs = np.mgrid[0:32, 0:32].astype(np.float32)
    flow = np.stack([0.1 * xs, 0.05 * xs], axis=-1)  # u_x = 0.1, v_x = 0.05 -> shear 0.025
    maps = flow_to_map(flow, "uv_strain")
    assert maps.shape == (3, 32, 32)
    np.testing.assert_allclose(maps[0], flow[..., 0])
    np.testing.assert_allclose(maps[1], flow[..., 1])
    np.testing.assert_allclose(maps[2], np.sqrt(0.1**2 + 2 * 0.025**2), rtol=1e-5)
    np.testing.assert_allclose(optical_strain(flow + 7.0), maps[2], atol=1e-6)  # translation has no strain


@pytest.mark.parametrize("channels", ["magnitude", "uv_strain"])
def test_maps_are_positively_homogeneous(channels):
    flows = np.random.default_rng(2).normal(size=(3, 40, 40, 2)).astype(np.float32)
    np.testing.assert_allclose(
        flow_to_map(2.6 * flows, channels, 20), 2.6 * flow_to_map(flows, channels, 20), rtol=1e-4, atol=1e-5
    )


def test_lagrangian_moves_a_subpixel_shift_by_one_plus_alpha(texture):
    shift = 0.2
    frames = np.stack([shifted(texture, shift * k / 2, 0.0) for k in (1, 2)])  # 0.1 px, 0.2 px
    alphas = [0.0, 1.0, 2.0]
    motion = MotionSpec("tvl1_skimage", "magnitude", SIZE)
    result = lagrangian(texture, frames, alphas, motion)
    assert result.frames.shape == (3, 2, SIZE, SIZE, 3)
    assert result.motion_maps.shape == (3, 2, 1, SIZE, SIZE)
    for a, alpha in enumerate(alphas):
        measured = interior(estimate_flow(texture, result.frames[a, 1], "tvl1_skimage"))[..., 0].mean()
        assert measured == pytest.approx((1 + alpha) * shift, abs=0.03)
        map_mean = result.motion_maps[a, 1, 0, 12:-12, 12:-12].mean()
        assert map_mean == pytest.approx((1 + alpha) * shift, abs=0.03)
    # alpha = 0 renders the recorded frame.
    rendering_error = np.abs(interior(result.frames[0, 1] - frames[1])).mean()
    assert rendering_error < 0.35 * np.abs(interior(frames[1] - texture)).mean()


def test_lagrangian_rejects_negative_alphas(texture):
    with pytest.raises(ValueError, match="non-negative"):
        lagrangian(texture, texture[None], [1.0, -2.0], MotionSpec())


def test_no_magnification_repeats_frames_and_maps(texture):
    frames = np.stack([shifted(texture, 1.0, 0.0)])
    result = no_magnification(texture, frames, [1.0], MotionSpec("dis", "uv_strain", 48))
    assert result.frames.shape == (1, 1, SIZE, SIZE, 3)
    assert result.motion_maps.shape == (1, 1, 3, 48, 48)
    np.testing.assert_array_equal(result.frames[0], frames)
    assert np.median(result.motion_maps[0, 0, 0]) == pytest.approx(0.5, abs=0.15)  # 1 px at 96 = 0.5 px at 48


def test_registry_binds_options_and_rejects_unknown_names():
    assert MAGNIFIERS.names() == ["eulerian", "lagrangian", "magnet", "none"]
    magnify = get_magnifier({"name": "lagrangian", "alphas": [2.0], "test_alpha": 2.0})
    assert magnify.func is lagrangian and magnify.keywords == {}
    with pytest.raises(ValueError, match="unknown magnification 'phase_based'"):
        get_magnifier({"name": "phase_based", "alphas": [2.0], "test_alpha": 2.0})


def test_motion_spec_from_config_validates():
    spec = MotionSpec.from_config({"name": "tvl1", "channels": "uv_strain", "params": {"warps": 2}}, 64)
    assert (spec.method, spec.channels, spec.map_size, dict(spec.params)) == ("tvl1", "uv_strain", 64, {"warps": 2})
    assert spec.maps(np.zeros((2, 32, 32, 2), np.float32)).shape == (2, 3, 64, 64)  # C = 3: u, v, strain
    with pytest.raises(ValueError, match="unknown motion channels"):
        MotionSpec.from_config({"name": "tvl1", "channels": "rgb"}, 64)
