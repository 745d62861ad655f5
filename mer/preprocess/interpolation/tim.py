"""The temporal interpolation model (TIM) of Zhou et al., as used for SMIC and CASME II (Pfister et al., ICCV 2011).

TIM treats the T frames of a clip as T points in image space, joined in order by a path graph, and embeds
the graph on a curve with the eigenvectors of its Laplacian ``L = D - W``. For the path graph these are known
in closed form: the ``k``-th eigenvector (``k = 1..T-1``; ``k = 0`` is the constant) has the entries
``y_k(i) = sin(pi k i / T + pi (T - k) / (2 T)) = cos(pi k (i - 1/2) / T)`` for frames ``i = 1..T``, and the
curve ``F(t) = [y_1(t), ..., y_{T-1}(t)]`` is the same expression at a continuous ``t``. The mean-removed,
PCA-reduced frames ``x_i`` are mapped to that curve by a linear map ``M`` learnt from ``x_i = M F(i)``; a new
frame at time ``t`` is ``M F(t)`` mapped back through the PCA basis, plus the mean.

With every PCA component kept, the model reproduces each recorded frame (the ``T - 1`` curve coordinates
span exactly the mean-removed frames' time courses) and amounts to trigonometric (DCT-II) interpolation of
every pixel's time course: a smooth, global model of the whole segment, which is why TIM reads every
recorded frame from onset to end.
"""

from __future__ import annotations

import numpy as np

from mer.preprocess.interpolation import bracket, register_interpolator

# Principal components whose standard deviation is below this fraction of the largest carry no variation of
# the frames, only rounding (the Gram matrix squares the singular values, so float64 resolves about 1e-8).
_RANK_TOLERANCE = 1e-6


def path_graph_curve(positions: np.ndarray, num_frames: int) -> np.ndarray:
    """The path graph's Laplacian embedding of ``num_frames`` frames, at (fractional) frame positions.

    Args:
        positions: ``(K,)`` 0-based positions along the clip, in ``[0, num_frames - 1]``; position ``i`` is
            recorded frame ``i``.
        num_frames: T, the nodes of the path graph.

    Returns:
        ``(K, T - 1)`` float64: row ``j`` is ``F`` at ``positions[j]``, whose ``k``-th coordinate is
        ``cos(pi k (positions[j] + 1/2) / T)``, ``k = 1..T-1``.
    """
    frequencies = np.arange(1, num_frames)
    return np.cos(np.pi * frequencies[None, :] * (np.asarray(positions, np.float64)[:, None] + 0.5) / num_frames)


@register_interpolator("tim", whole_segment=True)
def tim(
    frames: np.ndarray, frame_numbers: np.ndarray, stamps: np.ndarray, components: int | None = None
) -> np.ndarray:
    """Temporal interpolation model: frames sampled from the clip's path-graph embedding.

    The recorded frames are taken as equally spaced along the curve (as TIM always does); a stamp between
    two recorded frames lies between their positions in proportion to its distance to each, so that gaps in
    the frame numbering (SMIC) stretch no other part of the clip.

    Args:
        frames: ``(T, H, W, 3)`` float32 in [0, 1]: every recorded frame of the segment, in order.
        frame_numbers: ``(T,)`` their frame numbers, strictly increasing.
        stamps: ``(K,)`` time stamps within ``[frame_numbers[0], frame_numbers[-1]]``.
        components: PCA components kept of the mean-removed frames; ``None`` keeps all (at most ``T - 1``),
            so that a stamp on a recorded frame returns that frame (to float rounding). Fewer components
            smooth the clip.

    Returns:
        ``(K, H, W, 3)`` float32 in [0, 1].

    Raises:
        ValueError: Frames and frame numbers of different lengths, a stamp outside the recording, or
            ``components < 1``.
    """
    num_frames = len(frames)
    frame_numbers = np.asarray(frame_numbers, dtype=np.float64)
    stamps = np.asarray(stamps, dtype=np.float64)
    if len(frame_numbers) != num_frames:
        raise ValueError(f"{num_frames} frames but {len(frame_numbers)} frame numbers")
    if components is not None and components < 1:
        raise ValueError(f"TIM needs at least one PCA component, got components={components}")
    bracket(frame_numbers, stamps)  # rejects unsorted frame numbers and stamps outside the recording
    if num_frames == 1:
        return np.repeat(frames[:1].astype(np.float32), len(stamps), axis=0)

    flat = frames.reshape(num_frames, -1).astype(np.float64)
    mean = flat.mean(axis=0)
    centred = flat - mean  # (T, D)
    # PCA of the T mean-removed frames (at most T - 1 components) by the method of snapshots: the
    # eigenvectors of the small T x T Gram matrix are the frames' coordinates on the principal axes, up to
    # their scale, so the D-dimensional axes are never formed.
    eigenvalues, coordinates = np.linalg.eigh(centred @ centred.T)  # eigenvalues: squared singular values
    eigenvalues, coordinates = eigenvalues[::-1], coordinates[:, ::-1]  # largest first
    rank = int(np.count_nonzero(eigenvalues > _RANK_TOLERANCE**2 * eigenvalues[0]))
    kept = rank if components is None else min(components, rank)
    scales = np.sqrt(eigenvalues[:kept])  # the singular values
    scores = coordinates[:, :kept] * scales  # (T, kept): the frames in PCA coordinates

    # Learn x_i = M F(i) by least squares. The curve's T - 1 coordinates, being eigenvectors of the Laplacian,
    # are orthogonal over the T frames (squared norm T / 2 each), so the fit is M = (2 / T) F^T X; it is
    # exact, because they span every time course orthogonal to the constant, as the mean-removed scores are.
    curve = path_graph_curve(np.arange(num_frames), num_frames)  # (T, T - 1)
    mapping = (2.0 / num_frames) * curve.T @ scores  # (T - 1, kept)

    positions = np.interp(stamps, frame_numbers, np.arange(num_frames, dtype=np.float64))
    new_scores = path_graph_curve(positions, num_frames) @ mapping  # (K, kept)
    # Back to images: a principal axis is (its coordinates / its scale) . centred frames, so every new frame is
    # a weighted sum of the centred frames.
    weights = (new_scores / scales) @ coordinates[:, :kept].T  # (K, T)
    result = weights @ centred + mean
    # The trigonometric fit may overshoot the recorded range slightly near sharp changes.
    return np.clip(result, 0.0, 1.0).astype(np.float32).reshape(len(stamps), *frames.shape[1:])
