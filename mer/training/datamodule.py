"""LOSO data: one fold of a complete cache, in memory.

Fold ``k`` tests the subject ``subjects[k]`` (subjects sorted); every other subject trains. The
test subject influences nothing the model is trained with: not the samples, not the AU graph
(read from the fold's npz, built from training subjects only), not the normalisation scale.

Optionally (``val_subjects > 0``) a few of the fold's training subjects are held out as a
validation split, on which a checkpoint can be selected; they are drawn from the training
subjects only, so the test subject still influences nothing, checkpoint choice included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from mer.cache import Cache, alpha_index, load_cache
from mer.training.splits import loso_split


def capture_random_state(loader: torch.Generator | None, dataset: torch.Generator | None) -> dict[str, Any]:
    """The state of torch's, numpy's and Python's global generators, CUDA's, and those of a training split (its
    loader's shuffle generator; its dataset's draws, where it draws any)."""
    import random

    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "loader": None if loader is None else loader.get_state(),
        "dataset": None if dataset is None else dataset.get_state(),
    }


def restore_random_state(state: dict[str, Any], loader: torch.Generator, dataset: torch.Generator | None) -> None:
    """Put back what :func:`capture_random_state` saved."""
    import random

    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("loader") is not None:
        loader.set_state(state["loader"])
    if dataset is not None and state.get("dataset") is not None:
        dataset.set_state(state["dataset"])


class PatchDataset(Dataset):
    """Clips of one split, with one amplification factor chosen per path.

    Args:
        patches: float32 tensor (M, A, N, R, C, 7, 7).
        labels: int64 tensor (M,).
        subjects: Subject id of each clip.
        clips: Clip name of each clip.
        alpha_index: Index into the A axis used for every path (testing), or None to draw one
            at random per path and sample (the paper's training augmentation).
        seed: Seed of the random draws.
    """

    def __init__(
        self,
        patches: torch.Tensor,
        labels: torch.Tensor,
        subjects: list[str],
        clips: list[str],
        alpha_index: int | None,
        seed: int = 0,
    ) -> None:
        self.patches = patches
        self.labels = labels
        self.subjects = subjects
        self.clips = clips
        self.alpha_index = alpha_index
        self.generator = torch.Generator().manual_seed(seed)
        self._paths = torch.arange(patches.shape[2])

    def __len__(self) -> int:
        return self.patches.shape[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        num_alphas, num_paths = self.patches.shape[1], self.patches.shape[2]
        if self.alpha_index is None:
            alphas = torch.randint(num_alphas, (num_paths,), generator=self.generator)
        else:
            alphas = torch.full((num_paths,), self.alpha_index, dtype=torch.long)
        return {
            "patches": self.patches[index, alphas, self._paths],  # (N, R, C, 7, 7)
            "label": self.labels[index],
            "subject": self.subjects[index],
            "clip": self.clips[index],
        }


class FlowImageDataset(Dataset):
    """Clips of one split as onset -> apex flow images (``representation=flow_image``).

    Args:
        images: float32 tensor (M, C, S, S).
        labels: int64 tensor (M,).
        subjects: Subject id of each clip.
        clips: Clip name of each clip.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, subjects: list[str], clips: list[str]) -> None:
        self.images, self.labels, self.subjects, self.clips = images, labels, subjects, clips

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        # Under the same key as ROI patches: the model input, whatever the representation.
        return {"patches": self.images[index], "label": self.labels[index], "subject": self.subjects[index],
                "clip": self.clips[index]}


class LOSODataModule(pl.LightningDataModule):
    """One leave-one-subject-out fold of a preprocessed cache.

    The constructor only stores its arguments; :meth:`setup` reads the cache and builds the fold (the split is
    :func:`mer.training.splits.loso_split`). Lightning calls it in ``fit`` and ``test``; code that reads the
    fold's attributes before that calls it itself (a second call does nothing).

    Args:
        cache_dir: A complete cache directory (see :mod:`mer.cache`).
        fold: Index of the test subject in the sorted subject ids; None trains on every subject with no test
            split (``protocol=all_subjects``: the AU graph is then counted over every clip, the scale over every
            training patch).
        batch_size: Training and test batch size.
        test_alpha: Amplification factor used at test time (must be one of the cache's; ROI patches only).
        normalize: Divide patches by the standard deviation of the fold's training patches.
        permute_train_labels: Shuffle the training labels (an honesty control: the model can then
            learn nothing real, and the pooled UF1 must fall to chance).
        seed: Seed of the α draws, the label permutation and the validation subjects.
        val_subjects: How many of the fold's training subjects to hold out as a validation split
            (0: none; every non-test subject trains). They are drawn at random (``seed``, ``fold``)
            from the training subjects, never include the test subject, and do not contribute to
            the normalisation scale. The AU graph is the fold's (all non-test subjects).
        cache: An already-loaded cache (to share one in-memory copy across folds); None: :meth:`setup` loads
            ``cache_dir``.
    """

    def __init__(
        self,
        cache_dir: str | Path,
        fold: int | None,
        batch_size: int = 32,
        test_alpha: float | None = None,
        normalize: bool = True,
        permute_train_labels: bool = False,
        seed: int = 0,
        val_subjects: int = 0,
        cache: Cache | None = None,
    ) -> None:
        super().__init__()
        self.cache_dir = cache_dir
        self.fold = fold
        self.batch_size = batch_size
        self.test_alpha = test_alpha
        self.normalize = normalize
        self.permute_train_labels = permute_train_labels
        self.seed = seed
        self.num_val_subjects = val_subjects
        self.cache = cache
        self._train_generator: torch.Generator | None = None
        self._resume_state: dict[str, Any] | None = None
        self._is_set_up = False

    def setup(self, stage: str | None = None) -> None:
        """Load the cache (unless one was given) and build the fold: its split, scale, AU graph and datasets.

        Sets ``test_subject``, ``val_subjects`` (the names), ``train_index`` / ``val_index`` / ``test_index``,
        ``representation``, ``scale``, ``test_alpha_index``, ``train_set`` / ``val_set`` / ``test_set`` and
        ``au_adjacency``. Call it before reading any of them; a second call (Lightning's, in ``fit`` and
        ``test``) does nothing.

        Args:
            stage: Lightning's stage (``fit``, ``test``, ...); every stage gets the whole fold.

        Raises:
            ValueError: ``fold`` or ``val_subjects`` out of range (:func:`mer.training.splits.loso_split`), a
                ``test_alpha`` the cache does not hold, or a fold AU graph of another test subject.
        """
        if self._is_set_up:
            return
        if self.cache is None:
            self.cache = load_cache(self.cache_dir)
        split = loso_split(self.cache.samples, self.fold, val_subjects=self.num_val_subjects, seed=self.seed,
                           subjects=self.cache.subjects)
        self.test_subject, self.val_subjects = split.test_subject, split.val_subjects
        self.train_index, self.val_index, self.test_index = split.train_index, split.val_index, split.test_index
        self.representation = self.cache.representation
        patches = torch.from_numpy(np.ascontiguousarray(self.cache.patches))
        self.scale = self._normalisation_scale(patches)
        self.test_alpha_index = self._test_alpha_index()
        self._build_datasets(patches)
        self.au_adjacency = self._au_adjacency()
        self._is_set_up = True

    def _normalisation_scale(self, patches: torch.Tensor) -> float:
        """The std of the training patches (the training subjects only), or 1 without ``normalize``."""
        scale = float(patches[self.train_index].std()) if self.normalize else 1.0
        return scale if np.isfinite(scale) and scale > 0 else 1.0

    def _test_alpha_index(self) -> int | None:
        """Index of the test α on the cache's α axis (None for flow images, which have no such axis)."""
        if self.representation != "roi_patches":
            return None
        alphas = [float(a) for a in self.cache.manifest["alphas"]]
        test_alpha = float(self.cache.manifest["test_alpha"] if self.test_alpha is None else self.test_alpha)
        return alpha_index(alphas, test_alpha, "data.test_alpha", "the cached alphas")

    def _build_datasets(self, patches: torch.Tensor) -> None:
        """``train_set`` (labels permuted with ``permute_train_labels``), ``val_set`` and ``test_set``."""
        samples = self.cache.samples
        labels = torch.tensor(samples["class_index"].to_numpy(dtype=np.int64))
        train_labels = labels[self.train_index]
        if self.permute_train_labels:
            order = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(self.seed + 7919))
            train_labels = train_labels[order]
        names = samples["subject"].astype(str).tolist(), samples["clip"].astype(str).tolist()
        self.train_set = self._dataset(patches, names, self.train_index, train_labels, None)
        self.val_set = self._dataset(patches, names, self.val_index, labels[self.val_index], self.test_alpha_index)
        self.test_set = self._dataset(patches, names, self.test_index, labels[self.test_index], self.test_alpha_index)

    def _dataset(self, patches: torch.Tensor, names: tuple[list[str], list[str]], index: np.ndarray,
                 labels: torch.Tensor, alpha_index: int | None) -> Dataset:
        """One split's dataset: the rows ``index`` divided by the fold's scale, with their subjects and clips."""
        subjects, clips = [names[0][i] for i in index], [names[1][i] for i in index]
        if self.representation == "flow_image":
            return FlowImageDataset(patches[index] / self.scale, labels, subjects, clips)
        return PatchDataset(patches[index] / self.scale, labels, subjects, clips, alpha_index=alpha_index, seed=self.seed)

    def _au_adjacency(self) -> np.ndarray:
        """The fold's AU graph from the cache (training subjects only); over every clip with ``fold=None``."""
        if self.fold is None:
            from mer.data.au_graph import cooccurrence

            return cooccurrence(self.cache.samples["aus"])  # every clip trains: every clip counts
        graph = self.cache.fold_graph(self.fold)
        if str(graph["test_subject"]) != self.test_subject:
            raise ValueError(f"AU graph of fold {self.fold} is for {graph['test_subject']}, expected {self.test_subject}")
        return np.asarray(graph["adjacency"], dtype=np.float32)

    @property
    def num_classes(self) -> int:
        return len(self.cache.manifest["classes"])

    @property
    def class_names(self) -> list[str]:
        return list(self.cache.manifest["classes"])

    @property
    def region_sizes(self) -> list[int]:
        return list(self.cache.manifest["region_sizes"])

    @property
    def num_paths(self) -> int:
        """N (1 for a flow image, one onset -> apex motion)."""
        return 1 if self.representation == "flow_image" else int(self.cache.patches.shape[2])

    @property
    def in_channels(self) -> int:
        return int(self.cache.patches.shape[1 if self.representation == "flow_image" else 4])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's model input: ``(C, S, S)`` flow image or ``(N, R, C, p, p)`` ROI patches."""
        shape = self.cache.patches.shape
        return tuple(int(d) for d in (shape[1:] if self.representation == "flow_image" else shape[2:]))

    def train_dataloader(self) -> DataLoader:
        self._train_generator = torch.Generator().manual_seed(self.seed)
        if self._resume_state is not None:
            # A resumed fit: Lightning asks for the loader right before it iterates the first resumed epoch,
            # so the random state saved at the end of the last finished epoch is put back here.
            restore_random_state(self._resume_state, self._train_generator, getattr(self.train_set, "generator", None))
            self._resume_state = None
        return DataLoader(
            self.train_set, batch_size=self.batch_size, shuffle=True, generator=self._train_generator, num_workers=0,
        )

    def state_dict(self) -> dict[str, Any]:
        """Every random stream training draws from, as it stands now (Lightning saves it in each checkpoint).

        Checkpoints are written at the end of an epoch, when that epoch's draws (shuffle order, α of every
        path, dropout) are all made: a fold resumed from one continues with the draws the uninterrupted run
        makes, so it ends with the same model.
        """
        return capture_random_state(self._train_generator, getattr(self.train_set, "generator", None))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Keep a checkpoint's random state until :meth:`train_dataloader` builds the loader it belongs to."""
        self._resume_state = state if state else None

    def val_dataloader(self) -> DataLoader:
        """The validation subjects at the test α (empty when ``val_subjects=0``)."""
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, num_workers=0)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.batch_size, shuffle=False, num_workers=0)
