"""RIFE HDv3 frame interpolation (Huang et al., ECCV 2022), batched over the stamps of a clip.

The network is the ``IFNet`` of the ECCV2022-RIFE ``train_log`` HDv3 model: three flow blocks
run coarse to fine (scales 4, 2, 1). Each block is applied to both frame orders and the two
estimates are averaged; the result refines a pair of flows (intermediate frame -> frame 0,
intermediate frame -> frame 1) and a fusion mask. Both frames are warped backwards with the
flows and blended by the sigmoid of the mask. A fourth block (``block_tea``, the distillation
teacher used in training) is built only so that the published state dict loads strictly; it
never runs at inference.

The network predicts the temporal midpoint only. Any other ratio comes from bisection, as
in the published ``inference_img.py``: keep predicting the midpoint of the current bracket
and moving one end of the bracket to it until the midpoint is within ``tolerance`` of the
wanted ratio (at most ``max_calls`` network calls). Here every stamp of a clip bisects at
once: each bisection level is one batched network call over the stamps still searching.

Command line (one interpolated frame from two ``.npy`` frames)::

    python -m mer.preprocess.interpolation.rife --weights W --frame0 A.npy --frame1 B.npy --ratio R --out OUT.npy
"""

from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mer.errors import ConfigError
from mer.preprocess.interpolation import bracket, register_interpolator
from mer.preprocess.tensor_frames import available_device, load_frame_npy, to_nchw_tensor, to_nhwc_array
from mer.weights import RIFE_FETCH_COMMAND, WeightsError, check_rife_file, load_strict

SCALES = (4, 2, 1)
PAD_MULTIPLE = 32


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``image`` at ``pixel + flow`` (bilinear, border padding, corner-aligned grid).

    Args:
        image: (B, C, H, W).
        flow: (B, 2, H, W) displacement in pixels, x (columns) first.

    Returns:
        (B, C, H, W): ``out[..., y, x] = image[..., y + flow_y, x + flow_x]``.
    """
    batch, _, height, width = flow.shape
    # Normalised coordinates in [-1, 1] with align_corners=True: pixel i sits at -1 + 2i/(W-1),
    # so one pixel is 2/(W-1) and the flow is scaled by the same factor.
    grid_x = torch.linspace(-1.0, 1.0, width, device=flow.device, dtype=flow.dtype).view(1, 1, width)
    grid_y = torch.linspace(-1.0, 1.0, height, device=flow.device, dtype=flow.dtype).view(1, height, 1)
    sample_x = grid_x + flow[:, 0] / ((width - 1.0) / 2.0)
    sample_y = grid_y + flow[:, 1] / ((height - 1.0) / 2.0)
    grid = torch.stack([sample_x, sample_y], dim=-1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _conv_prelu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution (with bias) followed by a per-channel PReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=True),
        nn.PReLU(out_channels),
    )


class IFBlock(nn.Module):
    """One coarse-to-fine step: from (frames, current flow) at 1/scale to a flow and mask update.

    Layout (names match the published state dict): ``conv0`` halves the resolution twice,
    ``convblock0..3`` are four residual pairs of 3x3 convs, ``conv1`` / ``conv2`` are two
    transposed-conv heads (x4 upsampling) giving the 4 flow channels and 1 mask channel.
    """

    def __init__(self, in_channels: int, width: int = 90) -> None:
        super().__init__()
        self.conv0 = nn.Sequential(
            _conv_prelu(in_channels, width // 2, stride=2),
            _conv_prelu(width // 2, width, stride=2),
        )
        # Four residual stages; attribute names convblock0..3 are fixed by the state dict.
        for index in range(4):
            self.add_module(f"convblock{index}", nn.Sequential(_conv_prelu(width, width), _conv_prelu(width, width)))
        self.conv1 = nn.Sequential(
            nn.ConvTranspose2d(width, width // 2, kernel_size=4, stride=2, padding=1),
            nn.PReLU(width // 2),
            nn.ConvTranspose2d(width // 2, 4, kernel_size=4, stride=2, padding=1),
        )
        self.conv2 = nn.Sequential(
            nn.ConvTranspose2d(width, width // 2, kernel_size=4, stride=2, padding=1),
            nn.PReLU(width // 2),
            nn.ConvTranspose2d(width // 2, 1, kernel_size=4, stride=2, padding=1),
        )

    def forward(self, features: torch.Tensor, flow: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict a flow and mask update.

        Args:
            features: (B, C_in - 4, H, W) images and mask at full resolution.
            flow: (B, 4, H, W) current flows in pixels.
            scale: work at 1/scale of the resolution.

        Returns:
            flow update (B, 4, H, W) in pixels and mask update (B, 1, H, W).
        """
        # recompute_scale_factor=False keeps the exact 1/scale sampling grid of the published code.
        resize = dict(mode="bilinear", align_corners=False, recompute_scale_factor=False)
        features = F.interpolate(features, scale_factor=1.0 / scale, **resize)
        flow = F.interpolate(flow, scale_factor=1.0 / scale, **resize) / scale  # pixels shrink with the image
        hidden = self.conv0(torch.cat((features, flow), 1))
        hidden = self.convblock0(hidden) + hidden
        hidden = self.convblock1(hidden) + hidden
        hidden = self.convblock2(hidden) + hidden
        hidden = self.convblock3(hidden) + hidden
        flow_update = F.interpolate(self.conv1(hidden), scale_factor=scale, **resize) * scale
        mask_update = F.interpolate(self.conv2(hidden), scale_factor=scale, **resize)
        return flow_update, mask_update


class RifeOutput(NamedTuple):
    """One midpoint prediction.

    Attributes:
        frame: (B, 3, H, W) the interpolated frame.
        flow: (B, 4, H, W) flows from the midpoint to frame 0 (channels 0-1) and to frame 1
            (channels 2-3), in pixels, x first.
        mask: (B, 1, H, W) fusion weight of warped frame 0 (after the sigmoid).
    """

    frame: torch.Tensor
    flow: torch.Tensor
    mask: torch.Tensor


def _swap_flow_pair(flow: torch.Tensor) -> torch.Tensor:
    """(t->0, t->1) flows to (t->1, t->0): the flows seen with the frame order reversed."""
    return torch.cat((flow[:, 2:4], flow[:, :2]), 1)


class IFNet(nn.Module):
    """RIFE HDv3 IFNet: 3,038,015 parameters in 160 tensors (``block_tea`` included)."""

    def __init__(self) -> None:
        super().__init__()
        # Block inputs: two warped frames (6) + mask (1) + the current flows (4).
        self.block0 = IFBlock(7 + 4)
        self.block1 = IFBlock(7 + 4)
        self.block2 = IFBlock(7 + 4)
        # Training-only teacher, which also sees the ground-truth middle frame (3 more channels).
        self.block_tea = IFBlock(10 + 4)

    def forward(self, frame0: torch.Tensor, frame1: torch.Tensor, scales: tuple[float, ...] = SCALES) -> RifeOutput:
        """Predict the temporal midpoint of two frames.

        Args:
            frame0, frame1: (B, 3, H, W) float in [0, 1]; H and W multiples of 32
                (see :func:`pad_to_multiple`).
            scales: the resolution divisor of each of the three blocks.

        Returns:
            The midpoint frame, the flows and the mask (:class:`RifeOutput`).
        """
        batch = frame0.shape[0]
        flow = frame0.new_zeros(batch, 4, *frame0.shape[2:])
        mask = frame0.new_zeros(batch, 1, *frame0.shape[2:])
        warped0, warped1 = frame0, frame1
        for block, scale in zip((self.block0, self.block1, self.block2), scales):
            # The block sees both frame orders, stacked on the batch axis: one call of twice the batch
            # instead of two (every convolution is per sample, so each order's output is that of its
            # own call; tests/preprocess/interpolation/test_rife.py). On 2 CPU threads this made one midpoint 1.3x (batch 8) to
            # 2x (batch 1) faster.
            both_flow, both_mask = block(
                torch.cat((torch.cat((warped0, warped1, mask), 1), torch.cat((warped1, warped0, -mask), 1))),
                torch.cat((flow, _swap_flow_pair(flow))), scale)
            forward_flow, reverse_flow = both_flow[:batch], both_flow[batch:]
            forward_mask, reverse_mask = both_mask[:batch], both_mask[batch:]
            # Average the two orders: the reversed pass's flows are swapped back and its mask
            # (the weight of the *other* frame) negated, in the same operation order as published.
            flow = flow + (forward_flow + _swap_flow_pair(reverse_flow)) / 2
            mask = mask + (forward_mask + (-reverse_mask)) / 2
            warped0 = backward_warp(frame0, flow[:, :2])
            warped1 = backward_warp(frame1, flow[:, 2:4])
        weight0 = torch.sigmoid(mask)
        frame = warped0 * weight0 + warped1 * (1 - weight0)
        return RifeOutput(frame=frame, flow=flow, mask=weight0)


def load_rife(path: str | Path, *, verify_hash: bool = True, device: str | torch.device = "cpu") -> IFNet:
    """Build an :class:`IFNet` and load weights strictly (``module.`` prefixes stripped).

    Args:
        path: ``flownet.pkl`` (the published HDv3 file, or a state dict of the same layout).
        verify_hash: require the published file's sha256; turn off for self-made weights.
        device: where the model lives.

    Returns:
        The model in eval mode.

    Raises:
        WeightsError: missing file, wrong hash or a state dict that does not fit; the
            message names the file and ``python -m mer.weights rife``.
    """
    path = Path(path)
    if verify_hash:
        check_rife_file(path)
    elif not path.is_file():
        raise WeightsError(f"RIFE weights not found: {path}. Fetch the published ones with `{RIFE_FETCH_COMMAND}`.")
    model = load_strict(IFNet(), path)
    return model.to(device).eval()


def pad_to_multiple(images: torch.Tensor, multiple: int = PAD_MULTIPLE) -> torch.Tensor:
    """Zero-pad (B, C, H, W) at the bottom and right up to multiples of ``multiple``."""
    height, width = images.shape[-2:]
    pad_bottom = -height % multiple
    pad_right = -width % multiple
    return F.pad(images, (0, pad_right, 0, pad_bottom))


@dataclass
class Bisection:
    """Result of :meth:`RifeInterpolator.bisect` for B stamps.

    Attributes:
        frames: (B, 3, H, W) the interpolated frames.
        reached_ratios: (B,) the ratio each returned frame stands for (within the tolerance
            of the wanted one unless max_calls ran out).
        network_calls: (B,) how many midpoint predictions each stamp needed (0 for the ends).
        flows: (B, 4, H, W) flows of each stamp's last network call, relative to the bracket of
            that call; zero where no call was made.
    """

    frames: torch.Tensor
    reached_ratios: torch.Tensor
    network_calls: torch.Tensor
    flows: torch.Tensor


class RifeInterpolator:
    """Arbitrary-ratio interpolation with RIFE, all stamps of a clip bisected together.

    Args:
        model: a loaded :class:`IFNet` (see :func:`load_rife`).
        tolerance: stop once the midpoint is within this distance of the wanted ratio.
            The RIFE script's ``--rthreshold 0.02`` means 0.01 here.
        max_calls: at most this many bisection levels (network calls per stamp).
        batch_size: at most this many stamps per network call (bounds memory).
    """

    def __init__(self, model: IFNet, *, tolerance: float = 0.01, max_calls: int = 8, batch_size: int = 16) -> None:
        if max_calls < 1:
            raise ValueError(f"max_calls must be >= 1, got {max_calls}")
        self.model = model.eval()
        self.tolerance = float(tolerance)
        self.max_calls = int(max_calls)
        self.batch_size = int(batch_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def midpoint(self, frame0: torch.Tensor, frame1: torch.Tensor) -> RifeOutput:
        """One network call on frames of any size (padded to 32 and cropped back).

        Args:
            frame0, frame1: (B, 3, H, W) float in [0, 1].

        Returns:
            :class:`RifeOutput` cropped to (H, W).
        """
        height, width = frame0.shape[-2:]
        output = self._predict(pad_to_multiple(frame0).contiguous(), pad_to_multiple(frame1).contiguous())
        return RifeOutput(*(tensor[..., :height, :width] for tensor in output))

    def _predict(self, frame0: torch.Tensor, frame1: torch.Tensor) -> RifeOutput:
        """Midpoints of padded frames, ``batch_size`` samples per network call."""
        chunks = [
            self.model(frame0[start:start + self.batch_size], frame1[start:start + self.batch_size])
            for start in range(0, frame0.shape[0], self.batch_size)
        ]
        return RifeOutput(*(torch.cat(parts, 0) for parts in zip(*chunks)))

    @torch.inference_mode()
    def bisect(self, frame0: torch.Tensor, frame1: torch.Tensor, ratios: torch.Tensor) -> Bisection:
        """Interpolate each pair at its ratio by recursive midpoints.

        Args:
            frame0, frame1: (B, 3, H, W) float in [0, 1], the frames at ratio 0 and 1.
            ratios: (B,) wanted positions in [0, 1].

        Returns:
            :class:`Bisection`; ratios within ``tolerance`` of 0 or 1 return the input frame
            itself (no call), 0.5 takes one call.
        """
        device = frame0.device
        # float64 like the published script's Python floats, so tolerance tests round the same way.
        ratios = torch.as_tensor(ratios, dtype=torch.float64).reshape(-1).to(device)
        if frame0.shape != frame1.shape or frame0.ndim != 4 or frame0.shape[1] != 3:
            raise ValueError(f"frame0 and frame1 must both be (B, 3, H, W); got {tuple(frame0.shape)} "
                             f"and {tuple(frame1.shape)}")
        if ratios.numel() != frame0.shape[0]:
            raise ValueError(f"{ratios.numel()} ratios for {frame0.shape[0]} frame pairs")
        if not torch.all((ratios >= 0) & (ratios <= 1)):
            raise ValueError(f"ratios must lie in [0, 1], got {ratios.tolist()}")
        height, width = frame0.shape[-2:]
        # Bisect on padded frames, as the published script does, and crop once at the end.
        # Cloned because the bracket ends are overwritten in place below; NCHW-contiguous so that
        # the convolutions take the same kernels as the published code (a channels-last view of an
        # HWC array would give results that differ in the last bits).
        left = pad_to_multiple(frame0).clone(memory_format=torch.contiguous_format)
        right = pad_to_multiple(frame1).clone(memory_format=torch.contiguous_format)
        low, high = torch.zeros_like(ratios), torch.ones_like(ratios)
        calls = torch.zeros(ratios.shape, dtype=torch.int64, device=device)
        flows = left.new_zeros(left.shape[0], 4, *left.shape[2:])

        # Comparisons written as in the published script (ratio -/+ tolerance) so that ratios
        # on a tolerance boundary fall on the same side after floating-point rounding.
        at_start = ratios <= 0.0 + self.tolerance
        at_end = ~at_start & (ratios >= 1.0 - self.tolerance)
        result = torch.where(at_end.view(-1, 1, 1, 1), right, left)
        reached = at_end.to(ratios.dtype)
        searching = ~(at_start | at_end)
        for _ in range(self.max_calls):
            active = torch.nonzero(searching).flatten()
            if active.numel() == 0:
                break
            output = self._predict(left[active], right[active])
            middle = (low[active] + high[active]) / 2
            result[active] = output.frame
            flows[active] = output.flow
            reached[active] = middle
            calls[active] += 1
            wanted = ratios[active]
            done = (wanted - self.tolerance <= middle) & (middle <= wanted + self.tolerance)
            # Move the bracket end on the far side of the wanted ratio to the new midpoint.
            wanted_above = ~done & (wanted > middle)
            wanted_below = ~done & ~wanted_above
            left[active[wanted_above]] = output.frame[wanted_above]
            low[active[wanted_above]] = middle[wanted_above]
            right[active[wanted_below]] = output.frame[wanted_below]
            high[active[wanted_below]] = middle[wanted_below]
            searching[active[done]] = False
        return Bisection(
            frames=result[..., :height, :width],
            reached_ratios=reached,
            network_calls=calls,
            flows=flows[..., :height, :width],
        )

    def interpolate(self, frame0: torch.Tensor, frame1: torch.Tensor, ratios: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) frames at ``ratios`` (B,) between ``frame0`` and ``frame1`` (B, 3, H, W)."""
        return self.bisect(frame0, frame1, ratios).frames

    def __call__(self, frames: np.ndarray, frame_numbers: np.ndarray, stamps: np.ndarray) -> np.ndarray:
        """Numpy interface shared with the weight-free interpolators; see :func:`interpolate`."""
        return interpolate(frames, frame_numbers, stamps, interpolator=self)


def interpolate(frames: np.ndarray, frame_numbers: np.ndarray, stamps: np.ndarray, *,
                interpolator: RifeInterpolator) -> np.ndarray:
    """Frames of a clip at arbitrary time stamps, synthesised by RIFE.

    Args:
        frames: (T, H, W, 3) float32 RGB in [0, 1].
        frame_numbers: (T,) the frame number of each frame, strictly increasing.
        stamps: (K,) wanted time stamps (frame-number units).
        interpolator: the loaded RIFE interpolator.

    Returns:
        (K, H, W, 3) float32 in [0, 1]. A stamp equal to a frame number returns that frame
        exactly; every other stamp is bisected between its two neighbours, all at once.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got {frames.shape}")
    if len(frames) != len(np.asarray(frame_numbers).reshape(-1)):
        raise ValueError(f"{len(frames)} frames but {len(np.asarray(frame_numbers).reshape(-1))} frame numbers")
    previous, following, ratios = bracket(frame_numbers, stamps)
    output = frames[previous].astype(np.float32, copy=True)
    needs_network = ratios > 0
    if np.any(needs_network):
        synthesised = interpolator.interpolate(
            to_nchw_tensor(frames[previous[needs_network]], interpolator.device),
            to_nchw_tensor(frames[following[needs_network]], interpolator.device),
            torch.from_numpy(ratios[needs_network]),
        )
        output[needs_network] = to_nhwc_array(synthesised)
    return output


# interpolation=rife, the preprocessing stage (conf/interpolation/rife.yaml).


@functools.lru_cache(maxsize=4)
def cached_rife(path: str, verify_hash: bool, device: str = "cpu") -> IFNet:
    """:func:`load_rife` once per process for each file and device: a preprocessing worker loads the network
    with its first clip and keeps it for the others. (A failed load is not cached.)"""
    return load_rife(path, verify_hash=verify_hash, device=device)


def rife_interpolator(weights: str | Path | None = None, verify_hash: bool = True, tolerance: float = 0.01,
                      max_calls: int = 8, batch_size: int = 16, device: str = "cpu") -> RifeInterpolator:
    """The interpolator an ``interpolation=rife`` config group describes (its options as keywords).

    Also the stage's ``validate`` hook: the pipeline calls it before any clip runs, so that missing or wrong
    weights stop the run at once.

    Raises:
        ConfigError: No weights configured, or a file that is missing, has the wrong hash or does not fit
            (the message names the file and ``python -m mer.weights rife``); a bad option or a device this
            machine lacks.
    """
    if weights is None:
        raise ConfigError(
            "interpolation=rife needs interpolation.weights, the path of the HDv3 flownet.pkl; fetch the "
            f"published file with `{RIFE_FETCH_COMMAND}` (it writes weights/rife/flownet.pkl, the default path)"
        )
    if int(batch_size) < 1:
        raise ConfigError(f"interpolation=rife: batch_size must be >= 1, got {batch_size}")
    try:
        model = cached_rife(str(Path(weights).expanduser().resolve()), bool(verify_hash),
                            str(available_device(device)))
        return RifeInterpolator(model, tolerance=tolerance, max_calls=max_calls, batch_size=batch_size)
    except (WeightsError, ValueError) as error:
        raise ConfigError(f"interpolation=rife: {error}") from error


@register_interpolator("rife", validate=rife_interpolator)
def rife_interpolation(frames: np.ndarray, frame_numbers: np.ndarray, stamps: np.ndarray,
                       **options: Any) -> np.ndarray:
    """RIFE HDv3 frames at the stamps of a clip (``interpolation=rife``).

    Args:
        frames: (T, H, W, 3) float32 RGB in [0, 1].
        frame_numbers: (T,) their frame numbers, strictly increasing.
        stamps: (K,) time stamps.
        **options: The config group's ``weights``, ``verify_hash``, ``tolerance``, ``max_calls``,
            ``batch_size`` and ``device`` (see :func:`rife_interpolator`).

    Returns:
        (K, H, W, 3) float32; a stamp on a recorded frame returns that frame exactly.
    """
    return interpolate(frames, frame_numbers, stamps, interpolator=rife_interpolator(**options))


def main(argv: list[str] | None = None) -> int:
    """``python -m mer.preprocess.interpolation.rife --weights W --frame0 A.npy --frame1 B.npy --ratio R --out OUT.npy``."""
    parser = argparse.ArgumentParser(prog="python -m mer.preprocess.interpolation.rife",
                                     description="Interpolate one frame between two with RIFE HDv3.")
    parser.add_argument("--weights", required=True, help="flownet.pkl (fetch it with `python -m mer.weights rife`)")
    parser.add_argument("--frame0", required=True, help=".npy, float32 H x W x 3 RGB in [0, 1]")
    parser.add_argument("--frame1", required=True, help=".npy, same shape as --frame0")
    parser.add_argument("--ratio", type=float, default=0.5, help="position between frame0 (0) and frame1 (1)")
    parser.add_argument("--out", required=True, help="output .npy, float32 H x W x 3 in [0, 1]")
    parser.add_argument("--out-flow", help="optional .npy for the flows of the last network call, float32 4 x H x W "
                                           "(to frame0: x, y; to frame1: x, y)")
    parser.add_argument("--tolerance", type=float, default=0.01, help="bisection tolerance on the ratio")
    parser.add_argument("--max-calls", type=int, default=8, help="at most this many network calls")
    parser.add_argument("--no-verify-hash", action="store_true",
                        help="accept weights other than the published flownet.pkl (same architecture)")
    args = parser.parse_args(argv)

    frame0, frame1 = load_frame_npy(args.frame0), load_frame_npy(args.frame1)
    if frame0.shape != frame1.shape:
        raise SystemExit(f"error: frame shapes differ: {frame0.shape} vs {frame1.shape}")
    try:
        model = load_rife(args.weights, verify_hash=not args.no_verify_hash)
    except WeightsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    interpolator = RifeInterpolator(model, tolerance=args.tolerance, max_calls=args.max_calls)
    result = interpolator.bisect(to_nchw_tensor(frame0), to_nchw_tensor(frame1), torch.tensor([args.ratio]))
    np.save(args.out, result.frames[0].permute(1, 2, 0).numpy().astype(np.float32))
    print(f"ratio {args.ratio}: reached {result.reached_ratios[0].item():.6g} in "
          f"{result.network_calls[0].item()} network call(s) -> {args.out}")
    if args.out_flow:
        if result.network_calls[0] == 0:
            print(f"error: ratio {args.ratio} returns an input frame without a network call; no flow to write",
                  file=sys.stderr)
            return 1
        np.save(args.out_flow, result.flows[0].numpy().astype(np.float32))
    return 0


if __name__ == "__main__":
    sys.exit(main())
