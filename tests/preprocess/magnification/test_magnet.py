"""MagNet: architecture, strict loading, manipulator invariants, batched clip magnification, CLI."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mer.preprocess.magnification import magnet
from mer.preprocess.magnification.magnet import MagNet, MagnetMagnifier, load_magnet, motion_map
from mer.weights import MAGNET_RELEASE_URL, WeightsError
from weights_fixtures import save_state_dict

USER_WEIGHTS = os.environ.get("MER_MAGNET_WEIGHTS")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> Path:
    """A randomly initialised MagNet saved as the port's DataParallel checkpoints are (``module.`` keys)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("magnet") / "magnet_epoch12_loss7.28e-02.pth"
    save_state_dict(MagNet(), path)
    return path


@pytest.fixture(scope="module")
def model(random_weights) -> MagNet:
    return load_magnet(random_weights)


def random_frames(count: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """(count, 3, H, W) RGB in [-1, 1]."""
    return torch.rand(count, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_parameter_count_no_biases_reflection_padding():
    network = MagNet()
    assert sum(parameter.numel() for parameter in network.parameters()) == 877_968
    convolutions = [module for module in network.modules() if isinstance(module, torch.nn.Conv2d)]
    assert len(convolutions) == len(network.state_dict()) == 42
    assert all(conv.bias is None and conv.padding == (0, 0) for conv in convolutions)
    assert sum(isinstance(module, torch.nn.ReflectionPad2d) for module in network.modules()) == 42
    state = network.state_dict()
    assert state["encoder.cba_1.conv2d.weight"].shape == (16, 3, 7, 7)
    assert state["decoder.resblks.8.cba_2.conv2d.weight"].shape == (64, 64, 3, 3)
    assert state["manipulator.h_resblk.cba_1.conv2d.weight"].shape == (32, 32, 3, 3)


def test_strict_load_of_prefixed_state_dict_and_exact_round_trip(model, random_weights, tmp_path):
    assert all(key.startswith("module.") for key in torch.load(random_weights, weights_only=True))
    again = load_magnet(save_state_dict(model, tmp_path / "magnet.pt", module_prefix=False))
    frame_a, frame_b = random_frames(2, 32, 40).split(1)
    with torch.inference_mode():
        first, second = model(frame_a, frame_b, 2.0), again(frame_a, frame_b, 2.0)
    assert torch.equal(first.frame, second.frame) and torch.equal(first.shape, second.shape)


def test_load_rejects_extra_keys(model, tmp_path):
    state = dict(model.state_dict())
    state["decoder.cba_2.conv2d.bias"] = torch.zeros(3)
    torch.save(state, tmp_path / "biased.pth")
    with pytest.raises(WeightsError, match="decoder.cba_2.conv2d.bias"):
        load_magnet(tmp_path / "biased.pth")


@pytest.mark.parametrize("path", [None, "missing/magnet.pt"])
def test_missing_weights_error_says_where_to_get_them(path):
    with pytest.raises(WeightsError) as error:
        load_magnet(path)
    message = str(error.value)
    for needed in ("magnet_epoch12_loss7.28e-02.pth", MAGNET_RELEASE_URL, "magnification.weights"):
        assert needed in message
    if path is not None:
        assert path in message


@pytest.mark.parametrize(("height", "width"), [(32, 48), (34, 46)])
def test_output_shapes(model, height, width):
    # 34 x 46: the half-resolution grid (17 x 23) is odd, so the upsampled texture is resized onto it.
    frame_a, frame_b = random_frames(4, height, width).split(2)
    with torch.inference_mode():
        output = model(frame_a, frame_b, torch.tensor([1.5, 3.0]))
    assert output.frame.shape == (2, 3, height, width)
    assert output.shape.shape == (2, 32, height // 2, width // 2)


def test_zero_alpha_or_no_motion_leaves_the_shape_of_frame_b(model):
    frame_a, frame_b, other_a = random_frames(3, 32, 32).split(1)
    with torch.inference_mode():
        _, shape_b = model.encoder(frame_b)
        # g and h have no biases, so a zero motion difference (or alpha = 0) adds exactly nothing.
        zero_alpha = model(frame_a, frame_b, 0.0)
        assert torch.equal(zero_alpha.shape, shape_b)
        assert torch.equal(model(other_a, frame_b, 0.0).frame, zero_alpha.frame)
        still = [model(frame_b, frame_b, alpha) for alpha in (1.2, 3.0)]
        assert torch.equal(still[0].shape, shape_b) and torch.equal(still[1].frame, still[0].frame)
        # A real motion difference does get manipulated.
        assert not torch.equal(model(frame_a, frame_b, 2.0).shape, shape_b)


def test_motion_map_normalises_each_channel_then_averages():
    shape = torch.zeros(2, 3, 2, 2)
    shape[0, 0] = torch.tensor([[0.0, 1.0], [2.0, 4.0]])
    shape[0, 1] = torch.tensor([[10.0, 10.0], [10.0, 20.0]])
    shape[0, 2] = 5.0  # constant channel: contributes 0 instead of 0/0
    shape[1] = -shape[0]
    result = motion_map(shape)
    assert result.shape == (2, 2, 2)
    torch.testing.assert_close(result[0], torch.tensor([[0.0, 0.25], [0.5, 2.0]]) / 3)
    torch.testing.assert_close(result[1], torch.tensor([[2.0, 1.75], [1.5, 0.0]]) / 3)


@pytest.mark.parametrize("channels_last", [True, False])
def test_clip_magnification_matches_the_one_pair_at_a_time_loop(model, channels_last):
    rng = np.random.default_rng(1)
    frames = rng.random((4, 32, 40, 3), dtype=np.float32)
    alphas = [1.2, 2.0]
    magnifier = MagnetMagnifier(model, batch_size=4, channels_last=channels_last)
    assert model.encoder.cba_1.conv2d.weight.is_contiguous()  # the caller's model is left as it was
    result = magnifier.magnify_clip(frames, alphas, keep_shapes=True)
    assert result.frames.shape == (2, 3, 32, 40, 3) and result.frames.dtype == np.float32
    assert result.motion_maps.shape == (2, 3, 16, 20) and result.shapes.shape == (2, 3, 32, 16, 20)
    assert result.frames.min() >= 0 and result.frames.max() <= 1
    assert result.motion_maps.min() >= 0 and result.motion_maps.max() <= 1
    to_network = lambda image: torch.from_numpy(image.transpose(2, 0, 1))[None] * 2 - 1  # noqa: E731
    with torch.inference_mode():
        for alpha_index, alpha in enumerate(alphas):
            for k in range(1, 4):
                single = model(to_network(frames[0]), to_network(frames[k]), alpha)
                expected_frame = ((single.frame[0].permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy()
                np.testing.assert_allclose(result.frames[alpha_index, k - 1], expected_frame, atol=1e-5)
                np.testing.assert_allclose(result.shapes[alpha_index, k - 1], single.shape[0].numpy(), atol=1e-5)
                np.testing.assert_allclose(result.motion_maps[alpha_index, k - 1], motion_map(single.shape)[0].numpy(),
                                           atol=1e-5)


def test_frames_on_demand_render_only_what_is_read_and_equal_the_loop(model):
    """render="on_demand": the maps without any decoder call; each frame read equals the one-pair-at-a-time loop."""
    from mer.preprocess.magnification import FramesOnDemand

    rng = np.random.default_rng(3)
    frames = rng.random((4, 32, 40, 3), dtype=np.float32)
    alphas = [1.2, 2.0, 3.0]
    magnifier = MagnetMagnifier(model, batch_size=2)
    calls = []
    decoder = magnifier.model.decoder
    original = decoder.forward
    decoder.forward = lambda *args: calls.append(args[0].shape[0]) or original(*args)
    lazy = magnifier.magnify_clip(frames, alphas, keep_shapes=True, render="on_demand")
    assert isinstance(lazy.frames, FramesOnDemand) and lazy.frames.shape == (3, 3, 32, 40, 3) and calls == []
    eager = MagnetMagnifier(model, batch_size=2).magnify_clip(frames, alphas, keep_shapes=True)
    np.testing.assert_allclose(lazy.motion_maps, eager.motion_maps, rtol=0, atol=1e-5)
    np.testing.assert_allclose(lazy.shapes, eager.shapes, rtol=0, atol=1e-5)
    last = lazy.frames[1, -1]  # the landmark frame: one pair rendered
    assert last.shape == (32, 40, 3) and sum(calls) == 1 and lazy.frames.rendered_count == 1
    row = lazy.frames[1]  # a visualisation's row: the two other pairs of that alpha, the first one reused
    assert row.shape == (3, 32, 40, 3) and sum(calls) == 3
    np.testing.assert_array_equal(row[-1], last)
    to_network = lambda image: torch.from_numpy(image.transpose(2, 0, 1))[None] * 2 - 1  # noqa: E731
    with torch.inference_mode():
        for k in range(1, 4):
            single = model(to_network(frames[0]), to_network(frames[k]), alphas[1])
            expected = ((single.frame[0].permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy()
            np.testing.assert_allclose(row[k - 1], expected, rtol=0, atol=1e-5)
    # Any other indexing agrees with the array rendered in full.
    np.testing.assert_allclose(np.asarray(lazy.frames), eager.frames, rtol=0, atol=1e-5)
    np.testing.assert_allclose(lazy.frames[:, 1:, 2:5, ::3], eager.frames[:, 1:, 2:5, ::3], rtol=0, atol=1e-5)
    np.testing.assert_allclose(lazy.frames[..., 0], eager.frames[..., 0], rtol=0, atol=1e-5)
    assert sum(calls) == 9  # every pair rendered once, however often it was read
    with pytest.raises(ValueError, match="render"):
        magnifier.magnify_clip(frames, alphas, render="some")


def test_clip_magnification_rejects_odd_sizes(model):
    with pytest.raises(ValueError, match="even frame sizes"):
        MagnetMagnifier(model).magnify_clip(np.zeros((3, 31, 32, 3), np.float32), [2.0])


def test_cli_writes_frame_and_representation(model, random_weights, tmp_path, capsys):
    rng = np.random.default_rng(2)
    frame_a, frame_b = rng.random((2, 36, 44, 3), dtype=np.float32)
    np.save(tmp_path / "a.npy", frame_a)
    np.save(tmp_path / "b.npy", frame_b)
    args = ["--weights", str(random_weights), "--frame-a", str(tmp_path / "a.npy"),
            "--frame-b", str(tmp_path / "b.npy"), "--alpha", "2.0",
            "--out-frame", str(tmp_path / "f.npy"), "--out-motion", str(tmp_path / "m.npy")]
    assert magnet.main(args) == 0
    frame, shape = np.load(tmp_path / "f.npy"), np.load(tmp_path / "m.npy")
    assert frame.shape == (36, 44, 3) and frame.dtype == np.float32 and shape.shape == (32, 18, 22)
    # Contiguous NCHW input, as the published pipeline builds it (the CLI reproduces that path exactly).
    to_network = lambda image: torch.from_numpy(image.transpose(2, 0, 1).copy())[None] * 2 - 1  # noqa: E731
    with torch.inference_mode():
        expected = model(to_network(frame_a), to_network(frame_b), 2.0)
    np.testing.assert_array_equal(frame, ((expected.frame[0] + 1) / 2).permute(1, 2, 0).numpy())
    np.testing.assert_array_equal(shape, expected.shape[0].numpy())

    assert magnet.main(args[:1] + [str(tmp_path / "absent.pth")] + args[2:]) == 1
    assert MAGNET_RELEASE_URL in capsys.readouterr().err


@pytest.mark.skipif(USER_WEIGHTS is None, reason="set MER_MAGNET_WEIGHTS to the port's checkpoint to test it")
def test_published_checkpoint_loads_strictly():
    network = load_magnet(USER_WEIGHTS)
    assert sum(parameter.numel() for parameter in network.parameters()) == 877_968
