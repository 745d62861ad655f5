"""Learning-based motion magnification (MagNet; Oh et al., ECCV 2018), batched over a clip.

The architecture is that of the PyTorch port the paper used (checkpoint
``magnet_epoch12_loss7.28e-02.pth`` / ``magnet.pt``; 877,968 parameters, every convolution
without bias and preceded by reflection padding; RGB inputs in [-1, 1]):

* **encoder**: 7x7 conv (16) -> strided 3x3 conv (32, half resolution) -> 3 residual blocks,
  then two branches: *texture* (a strided conv to quarter resolution + 2 residual blocks) and
  *shape* (a conv + 2 residual blocks), 32 channels each;
* **manipulator**: ``m_B + h(alpha * g(m_B - m_A))`` with ``g`` a conv + ReLU and ``h`` a conv
  followed by a residual block;
* **decoder**: texture upsampled (nearest) to the shape's resolution, concatenated (64
  channels), 9 residual blocks, nearest upsampling, 3x3 conv (32) + ReLU, 7x7 conv (3).

Frames of a clip are encoded once; every (frame, alpha) pair then goes through the
manipulator and decoder in batches. The paper keeps the magnified frame and the *motion
map*: the manipulated shape representation with each of its 32 channels min-max normalised to
[0, 1] and averaged over channels (:func:`motion_map`).

Command line::

    python -m mer.preprocess.magnification.magnet --weights W --frame-a A.npy --frame-b B.npy --alpha 2.0 \\
        --out-frame F.npy --out-motion M.npy
"""

from __future__ import annotations

import argparse
import copy
import functools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mer.errors import ConfigError
from mer.preprocess.magnification import FramesOnDemand, Magnified, amplification_factors, register_magnifier
from mer.preprocess.motion.maps import MotionSpec
from mer.preprocess.tensor_frames import available_device, load_frame_npy, to_nchw_tensor, to_nhwc_array
from mer.weights import MAGNET_WEIGHTS_HINT, WeightsError, load_strict

SHAPE_CHANNELS = 32


class _ConvUnit(nn.Module):
    """Reflection padding, bias-free convolution, optional ReLU (the port's basic unit)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 relu: bool = True) -> None:
        super().__init__()
        self.pad = nn.ReflectionPad2d(kernel_size // 2)
        self.conv2d = nn.Conv2d(in_channels, out_channels, kernel_size, stride, bias=False)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2d(self.pad(x))
        return F.relu(x) if self.relu else x


class _ResidualBlock(nn.Module):
    """``x + conv(relu(conv(x)))`` with 3x3 reflection-padded convolutions."""

    def __init__(self, channels: int, hidden_channels: int = 32) -> None:
        super().__init__()
        self.cba_1 = _ConvUnit(channels, hidden_channels, 3)
        self.cba_2 = _ConvUnit(hidden_channels, channels, 3, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cba_2(self.cba_1(x)) + x


def _residual_stack(count: int, channels: int, hidden_channels: int = 32) -> nn.Sequential:
    return nn.Sequential(*(_ResidualBlock(channels, hidden_channels) for _ in range(count)))


class MagNetEncoder(nn.Module):
    """RGB (B, 3, H, W) in [-1, 1] -> texture (B, 32, ~H/4, ~W/4) and shape (B, 32, ~H/2, ~W/2)."""

    def __init__(self) -> None:
        super().__init__()
        self.cba_1 = _ConvUnit(3, 16, 7)
        self.cba_2 = _ConvUnit(16, 32, 3, stride=2)
        self.resblks = _residual_stack(3, 32)
        self.texture_cba = _ConvUnit(32, 32, 3, stride=2)
        self.texture_resblks = _residual_stack(2, 32)
        self.motion_cba = _ConvUnit(32, 32, 3)
        self.motion_resblks = _residual_stack(2, 32)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.resblks(self.cba_2(self.cba_1(frames)))
        texture = self.texture_resblks(self.texture_cba(features))
        shape = self.motion_resblks(self.motion_cba(features))
        return texture, shape


class MagNetManipulator(nn.Module):
    """``m_B + h(alpha * g(m_B - m_A))`` on (B, 32, h, w) shape representations."""

    def __init__(self) -> None:
        super().__init__()
        self.g = _ConvUnit(32, 32, 3)
        self.h_conv = _ConvUnit(32, 32, 3, relu=False)
        self.h_resblk = _ResidualBlock(32)

    def forward(self, shape_a: torch.Tensor, shape_b: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
        """Args: shape_a, shape_b (B, 32, h, w); alphas (B,) magnification factors."""
        amplified = self.g(shape_b - shape_a) * alphas.view(-1, 1, 1, 1)
        return shape_b + self.h_resblk(self.h_conv(amplified))


class MagNetDecoder(nn.Module):
    """Texture (B, 32, h', w') + shape (B, 32, h, w) -> RGB (B, 3, 2h, 2w), roughly in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.resblks = _residual_stack(9, 64, hidden_channels=64)
        self.cba_1 = _ConvUnit(64, 32, 3)
        self.cba_2 = _ConvUnit(32, 3, 7, relu=False)

    def forward(self, texture: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        texture = F.interpolate(texture, scale_factor=2, mode="nearest")
        if texture.shape[-2:] != shape.shape[-2:]:
            # Odd half-resolution sizes: the port resizes the texture (nearest) onto the shape grid.
            texture = F.interpolate(texture, size=shape.shape[-2:], mode="nearest")
        features = self.resblks(torch.cat([texture, shape], 1))
        features = F.interpolate(features, scale_factor=2, mode="nearest")
        return self.cba_2(self.cba_1(features))


class MagNetOutput(NamedTuple):
    """Attributes:
        frame: (B, 3, H, W) magnified frame (network range, about [-1, 1]).
        shape: (B, 32, H/2, W/2) the manipulated shape representation.
    """

    frame: torch.Tensor
    shape: torch.Tensor


class MagNet(nn.Module):
    """Encoder, manipulator and decoder; 877,968 parameters, no biases."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = MagNetEncoder()
        self.manipulator = MagNetManipulator()
        self.decoder = MagNetDecoder()

    def forward(self, frame_a: torch.Tensor, frame_b: torch.Tensor, alphas: torch.Tensor | float) -> MagNetOutput:
        """Magnify the motion from ``frame_a`` to ``frame_b``.

        Args:
            frame_a, frame_b: (B, 3, H, W) RGB in [-1, 1] (H, W even).
            alphas: (B,) or a scalar magnification factor.

        Returns:
            :class:`MagNetOutput`: the magnified frame (rendered with ``frame_b``'s texture)
            and the manipulated shape representation.
        """
        alphas = torch.as_tensor(alphas, dtype=frame_b.dtype, device=frame_b.device).expand(frame_b.shape[0])
        _, shape_a = self.encoder(frame_a)
        texture_b, shape_b = self.encoder(frame_b)
        shape = self.manipulator(shape_a, shape_b, alphas)
        return MagNetOutput(frame=self.decoder(texture_b, shape), shape=shape)


def load_magnet(path: str | Path | None, *, device: str | torch.device = "cpu") -> MagNet:
    """Build :class:`MagNet` and load a checkpoint strictly (``module.`` prefixes stripped).

    Args:
        path: the port's checkpoint (``magnet_epoch12_loss7.28e-02.pth`` / ``magnet.pt``) or a
            state dict of the same layout; None when not configured.
        device: where the model lives.

    Returns:
        The model in eval mode.

    Raises:
        WeightsError: no path, a missing file, or a state dict that does not fit; the message
            says where the checkpoint is published and which config key to set.
    """
    if path is None or not Path(path).is_file():
        where = "no MagNet weights configured" if path is None else f"MagNet weights not found: {path}"
        raise WeightsError(f"{where}. {MAGNET_WEIGHTS_HINT}")
    model = load_strict(MagNet(), path)
    return model.to(device).eval()


def motion_map(shape: torch.Tensor) -> torch.Tensor:
    """The paper's motion map: per-channel min-max normalisation, then the channel mean.

    Args:
        shape: (..., 32, h, w) shape representations.

    Returns:
        (..., h, w) in [0, 1]. A constant channel (max == min) counts as 0 rather than the
        published code's 0/0 = NaN.
    """
    low = shape.amin(dim=(-2, -1), keepdim=True)
    span = shape.amax(dim=(-2, -1), keepdim=True) - low
    normalised = torch.where(span > 0, (shape - low) / torch.where(span > 0, span, 1.0), 0.0)
    return normalised.mean(dim=-3)


class ClipMagnification(NamedTuple):
    """MagNet applied to one clip for several alphas.

    Attributes:
        frames: (K, N, H, W, 3) float32 RGB in [0, 1]: frame k's motion from the onset magnified by alpha (a
            :class:`~mer.preprocess.magnification.FramesOnDemand` with ``render="on_demand"``).
        motion_maps: (K, N, H/2, W/2) float32 in [0, 1] (:func:`motion_map`).
        shapes: (K, N, 32, H/2, W/2) float32 manipulated representations, or None unless asked for.
    """

    frames: np.ndarray | FramesOnDemand
    motion_maps: np.ndarray
    shapes: np.ndarray | None


def to_network_range(frames: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> MagNet's [-1, 1] (the port's ``x / 127.5 - 1`` on 8-bit values)."""
    return frames * 2.0 - 1.0


def from_network_range(frames: torch.Tensor) -> torch.Tensor:
    """MagNet's [-1, 1] -> [0, 1] (no clipping)."""
    return (frames + 1.0) / 2.0


class MagnetMagnifier:
    """Batched MagNet over all frames x all alphas of a clip.

    Args:
        model: a loaded :class:`MagNet` (see :func:`load_magnet`).
        batch_size: (frame, alpha) pairs per manipulator + decoder call (bounds memory).
        channels_last: store the model's weights and feed its inputs channels-last (NHWC).
            On CPU, oneDNN's NHWC convolutions run these 32/64-channel layers several times
            faster in batches; the results differ from the NCHW ones only in rounding (~1e-6).
            The magnifier converts a copy, leaving ``model`` as it was.
    """

    def __init__(self, model: MagNet, *, batch_size: int = 8, channels_last: bool = True) -> None:
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = copy.deepcopy(model).eval().to(memory_format=self.memory_format)
        self.batch_size = int(batch_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def magnify(self, frame_a: torch.Tensor, frame_b: torch.Tensor, alphas: torch.Tensor) -> MagNetOutput:
        """Magnify B pairs, ``batch_size`` at a time.

        Args:
            frame_a, frame_b: (B, 3, H, W) RGB in [0, 1], H and W even.
            alphas: (B,) magnification factors.

        Returns:
            :class:`MagNetOutput` with the frame mapped back to [0, 1] (not clipped) and the raw
            (B, 32, H/2, W/2) representation.
        """
        _check_even(frame_b.shape[-2:])
        alphas = torch.as_tensor(alphas, dtype=frame_b.dtype).reshape(-1).to(frame_b.device)
        frame_a = to_network_range(frame_a).contiguous(memory_format=self.memory_format)
        frame_b = to_network_range(frame_b).contiguous(memory_format=self.memory_format)
        parts = [
            self.model(frame_a[start:start + self.batch_size], frame_b[start:start + self.batch_size],
                       alphas[start:start + self.batch_size])
            for start in range(0, frame_b.shape[0], self.batch_size)
        ]
        return MagNetOutput(frame=from_network_range(torch.cat([part.frame for part in parts])),
                            shape=torch.cat([part.shape for part in parts]))

    @torch.inference_mode()
    def encode_clip(self, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Texture and shape representations of every frame, each frame encoded once.

        Args:
            frames: (T, H, W, 3) float RGB in [0, 1]; H, W even.

        Returns:
            textures (T, 32, ~H/4, ~W/4) and shapes (T, 32, H/2, W/2), in the magnifier's memory format.
        """
        frames = np.asarray(frames, dtype=np.float32)
        # (T, H, W, 3) permuted to NCHW is already channels-last in memory.
        images = to_network_range(torch.from_numpy(frames).permute(0, 3, 1, 2).to(self.device))
        images = images.contiguous(memory_format=self.memory_format)
        textures, shapes = zip(*(self.model.encoder(images[start:start + self.batch_size])
                                 for start in range(0, len(images), self.batch_size)))
        return torch.cat(textures), torch.cat(shapes)

    @torch.inference_mode()
    def magnify_clip(self, frames: np.ndarray, alphas: np.ndarray | list[float], *,
                     keep_shapes: bool = False, render: str = "all") -> ClipMagnification:
        """Magnify the motion from frame 0 (onset) to each later frame, for every alpha.

        Args:
            frames: (N + 1, H, W, 3) float RGB in [0, 1], frame 0 the reference; H, W even.
            alphas: (K,) magnification factors.
            keep_shapes: also return the raw 32-channel representations (K*N*32*H*W/4 floats).
            render: ``"all"``: decode every (alpha, frame) pair into a frame now. ``"on_demand"``: the
                motion maps need only the encoder and the manipulator; the frames are a
                :class:`~mer.preprocess.magnification.FramesOnDemand` that runs the manipulator and the
                decoder (about 85 % of a pair's cost) for the pairs that are indexed, when they are.
                The two give the same numbers (to float rounding: batches are formed differently).

        Returns:
            :class:`ClipMagnification`; magnified frames clipped to [0, 1].
        """
        if render not in ("all", "on_demand"):
            raise ValueError(f"render must be 'all' or 'on_demand', got {render!r}")
        frames = np.asarray(frames, dtype=np.float32)
        if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) < 2:
            raise ValueError(f"frames must be (N + 1, H, W, 3) with N >= 1, got {frames.shape}")
        _check_even(frames.shape[1:3])
        alphas = torch.as_tensor(np.asarray(alphas, dtype=np.float32).reshape(-1))
        model, device = self.model, self.device
        # Each frame is encoded once (the published loop re-encodes the onset and frame k for
        # every (k, alpha)); the encoder is deterministic, so the result is the same.
        textures, shapes = self.encode_clip(frames)

        count, num_alphas = len(frames) - 1, alphas.numel()
        # Pair p stands for (alpha index p // N, frame index 1 + p % N).
        frame_index = torch.arange(num_alphas * count) % count + 1
        alpha_of_pair = alphas.repeat_interleave(count).to(device)
        height, width = frames.shape[1:3]
        decode_now = render == "all"
        magnified = np.empty((num_alphas * count, height, width, 3), dtype=np.float32) if decode_now else None
        maps = np.empty((num_alphas * count, height // 2, width // 2), dtype=np.float32)
        kept = None
        if keep_shapes:
            kept = np.empty((num_alphas * count, SHAPE_CHANNELS, height // 2, width // 2), dtype=np.float32)

        def manipulate(pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            index = frame_index[pairs].to(device)
            return index, model.manipulator(shapes[0].expand(len(pairs), -1, -1, -1), shapes[index],
                                             alpha_of_pair[pairs.to(device)])

        for start in range(0, num_alphas * count, self.batch_size):
            stop = min(start + self.batch_size, num_alphas * count)
            index, shape = manipulate(torch.arange(start, stop))
            if magnified is not None:
                rendered = from_network_range(model.decoder(textures[index], shape)).clamp_(0.0, 1.0)
                magnified[start:stop] = to_nhwc_array(rendered)
            maps[start:stop] = motion_map(shape).cpu().numpy()
            if kept is not None:
                kept[start:stop] = shape.cpu().numpy()

        def per_alpha(array: np.ndarray | None) -> np.ndarray | None:
            """(K*N, ...) -> (K, N, ...)."""
            return None if array is None else array.reshape(num_alphas, count, *array.shape[1:])

        if magnified is not None:
            frames_out: np.ndarray | FramesOnDemand = per_alpha(magnified)
        else:
            def render_pairs(pairs: np.ndarray) -> np.ndarray:
                out = np.empty((len(pairs), height, width, 3), dtype=np.float32)
                with torch.inference_mode():
                    for start in range(0, len(pairs), self.batch_size):
                        chunk = torch.from_numpy(pairs[start:start + self.batch_size])
                        index, shape = manipulate(chunk)
                        rendered = from_network_range(model.decoder(textures[index], shape)).clamp_(0.0, 1.0)
                        out[start:start + len(chunk)] = to_nhwc_array(rendered)
                return out

            frames_out = FramesOnDemand((num_alphas, count, height, width, 3), render_pairs)
        return ClipMagnification(frames=frames_out, motion_maps=per_alpha(maps), shapes=per_alpha(kept))


def _check_even(size: tuple[int, int] | torch.Size) -> None:
    height, width = int(size[0]), int(size[1])
    if height % 2 or width % 2:
        raise ValueError(f"MagNet needs even frame sizes (its shape representation is at half resolution), "
                         f"got {height} x {width}")


# magnification=magnet, the preprocessing stage (conf/magnification/magnet.yaml, conf/motion/magnet.yaml).


@functools.lru_cache(maxsize=4)
def cached_magnifier(path: str, batch_size: int, device: str = "cpu") -> MagnetMagnifier:
    """A :class:`MagnetMagnifier` once per process for each checkpoint and device: a preprocessing worker loads
    the network with its first clip and keeps it for the others. (A failed load is not cached.)"""
    return MagnetMagnifier(load_magnet(path, device=device), batch_size=batch_size)


def magnet_magnifier(weights: str | Path | None = None, batch_size: int = 8, device: str = "cpu") -> MagnetMagnifier:
    """The magnifier a ``magnification=magnet`` config group describes (its options as keywords).

    Also the stage's ``validate`` hook: the pipeline calls it before any clip runs, so that missing weights stop
    the run at once.

    Raises:
        ConfigError: No weights configured, a missing file or one that does not fit (the message says where
            the checkpoint is published and which config key to set: :data:`~mer.weights.MAGNET_WEIGHTS_HINT`);
            a bad batch size or a device this machine lacks.
    """
    if weights is None:
        raise ConfigError(f"magnification=magnet: no MagNet weights configured. {MAGNET_WEIGHTS_HINT}")
    if int(batch_size) < 1:
        raise ConfigError(f"magnification=magnet: batch_size must be >= 1, got {batch_size}")
    try:
        return cached_magnifier(str(Path(weights).expanduser().resolve()), int(batch_size),
                                str(available_device(device)))
    except (WeightsError, ValueError) as error:
        raise ConfigError(f"magnification=magnet: {error}") from error


def _resize_maps(maps: np.ndarray, size: int) -> np.ndarray:
    """(B, h, w) maps -> (B, size, size), values kept (the map is normalised, not in pixels)."""
    if maps.shape[-2:] == (size, size):
        return maps
    mode = "area" if size < maps.shape[-1] else "bilinear"
    options = {} if mode == "area" else {"align_corners": False}
    resized = F.interpolate(torch.from_numpy(maps)[:, None], size=(size, size), mode=mode, **options)
    return resized[:, 0].numpy()


@register_magnifier("magnet", validate=magnet_magnifier)
def magnet_magnification(onset: np.ndarray, frames: np.ndarray, alphas: Sequence[float], motion: MotionSpec,
                         weights: str | Path | None = None, batch_size: int = 8, device: str = "cpu") -> Magnified:
    """MagNet magnification of the motion from the onset to each frame, for every alpha (``magnification=magnet``).

    Args:
        onset: (H, W, 3) float32 RGB in [0, 1], frame 0; H, W even (the paper: 256).
        frames: (K, H, W, 3) float32, frames 1..K.
        alphas: A amplification factors, all >= 0.
        motion: With ``motion=magnet`` the maps are the paper's (:func:`motion_map` of the manipulated shape
            representation, C = 1, at H/2 and resized to ``motion.map_size`` if that differs); with an
            optical-flow motion they are those of ``flow(onset, magnified frame)``, as for Eulerian magnification.
        weights: The MagNet checkpoint.
        batch_size: (frame, alpha) pairs per network call.
        device: Where the network runs (``cpu``, ``cuda``, ...).

    Returns:
        :class:`Magnified` ``(A, K, H, W, 3)`` frames (clipped to [0, 1]) and ``(A, K, C, m, m)`` maps.
    """
    motion.check_magnification("magnet")
    magnifier = magnet_magnifier(weights, batch_size, device)
    # With MagNet's own maps no frame is needed to make them: frames are rendered when the clip reads them (its
    # landmark frame, a visualisation). An optical-flow motion needs every rendered frame.
    render = "on_demand" if motion.computed_by is not None else "all"
    clip = magnifier.magnify_clip(np.concatenate([onset[None], frames]), amplification_factors(alphas), render=render)
    num_alphas, num_frames = clip.frames.shape[:2]
    if motion.computed_by is not None:
        maps = _resize_maps(clip.motion_maps.reshape(num_alphas * num_frames, *clip.motion_maps.shape[2:]),
                            motion.map_size)
        maps = maps[:, None]  # one channel
    else:
        maps = motion.maps(motion.flows(onset, clip.frames.reshape(num_alphas * num_frames, *clip.frames.shape[2:])))
    return Magnified(frames=clip.frames, motion_maps=maps.reshape(num_alphas, num_frames, *maps.shape[1:]))


def main(argv: list[str] | None = None) -> int:
    """``python -m mer.preprocess.magnification.magnet --weights W --frame-a A.npy --frame-b B.npy --alpha 2.0 ...``."""
    parser = argparse.ArgumentParser(prog="python -m mer.preprocess.magnification.magnet",
                                     description="Magnify the motion from frame A to frame B with MagNet.")
    parser.add_argument("--weights", required=True, help="the port's checkpoint (magnet_epoch12_loss7.28e-02.pth)")
    parser.add_argument("--frame-a", required=True, help=".npy, float32 H x W x 3 RGB in [0, 1] (reference)")
    parser.add_argument("--frame-b", required=True, help=".npy, same shape (the frame whose motion is magnified)")
    parser.add_argument("--alpha", type=float, default=2.0, help="magnification factor")
    parser.add_argument("--out-frame", required=True,
                        help="output .npy, float32 H x W x 3: the network output mapped back by (y + 1) / 2")
    parser.add_argument("--out-motion", help="output .npy, float32 32 x H/2 x W/2: the manipulated representation")
    parser.add_argument("--clip", action="store_true", help="clip the magnified frame to [0, 1]")
    args = parser.parse_args(argv)

    frame_a, frame_b = load_frame_npy(args.frame_a), load_frame_npy(args.frame_b)
    if frame_a.shape != frame_b.shape:
        raise SystemExit(f"error: frame shapes differ: {frame_a.shape} vs {frame_b.shape}")
    try:
        # One pair: NCHW, which reproduces the published port's arithmetic bit for bit.
        magnifier = MagnetMagnifier(load_magnet(args.weights), channels_last=False)
    except WeightsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        output = magnifier.magnify(to_nchw_tensor(frame_a), to_nchw_tensor(frame_b), torch.tensor([args.alpha]))
    except ValueError as error:
        raise SystemExit(f"error: {error}") from error
    frame = output.frame[0].permute(1, 2, 0)
    if args.clip:
        frame = frame.clamp(0.0, 1.0)
    np.save(args.out_frame, frame.numpy().astype(np.float32))
    if args.out_motion:
        np.save(args.out_motion, output.shape[0].numpy().astype(np.float32))
    print(f"alpha {args.alpha}: magnified frame -> {args.out_frame}"
          + (f", representation -> {args.out_motion}" if args.out_motion else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
