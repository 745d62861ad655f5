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
        cache: An already-loaded cache (to share one in-memory copy across folds).
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
        self.cache = cache if cache is not None else load_cache(cache_dir)
        subjects = self.cache.subjects
        if fold is not None and not 0 <= fold < len(subjects):
            raise ValueError(f"fold {fold} out of range: the cache has {len(subjects)} subjects (folds 0..{len(subjects) - 1})")
        self.fold = fold
        self.batch_size = batch_size
        self.seed = seed
        self.test_subject = None if fold is None else subjects[fold]
        samples = self.cache.samples
        training_subjects = [s for s in subjects if s != self.test_subject]
        if not 0 <= val_subjects < len(training_subjects):
            raise ValueError(f"val_subjects={val_subjects}: fold {fold} has {len(training_subjects)} training subjects, "
                             f"at least one must remain for training")
        stream = len(subjects) if fold is None else fold  # every subject trains: a stream no fold draws from
        draw = np.random.default_rng([seed, stream]).permutation(len(training_subjects))[:val_subjects]
        self.val_subjects = sorted(training_subjects[i] for i in draw)
        subject_column = samples["subject"].astype(str)
        is_test = (subject_column == self.test_subject).to_numpy()
        is_val = subject_column.isin(self.val_subjects).to_numpy()
        self.train_index = np.flatnonzero(~is_test & ~is_val)
        self.val_index = np.flatnonzero(is_val)
        self.test_index = np.flatnonzero(is_test)

        self.representation = self.cache.representation
        patches = torch.from_numpy(np.ascontiguousarray(self.cache.patches))
        train_patches = patches[self.train_index]
        # The scale comes from the training subjects only.
        self.scale = float(train_patches.std()) if normalize else 1.0
        if not np.isfinite(self.scale) or self.scale <= 0:
            self.scale = 1.0
        labels = torch.tensor(samples["class_index"].to_numpy(dtype=np.int64))
        train_labels = labels[self.train_index]
        if permute_train_labels:
            order = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(seed + 7919))
            train_labels = train_labels[order]
        subjects_col = samples["subject"].astype(str).tolist()
        clips_col = samples["clip"].astype(str).tolist()

        def split(index: np.ndarray, split_labels: torch.Tensor, alpha_index: int | None) -> Dataset:
            names = [subjects_col[i] for i in index], [clips_col[i] for i in index]
            if self.representation == "flow_image":
                return FlowImageDataset(patches[index] / self.scale, split_labels, *names)
            return PatchDataset(patches[index] / self.scale, split_labels, *names, alpha_index=alpha_index, seed=seed)

        self.test_alpha_index = None
        if self.representation == "roi_patches":
            alphas = [float(a) for a in self.cache.manifest["alphas"]]
            test_alpha = float(self.cache.manifest["test_alpha"] if test_alpha is None else test_alpha)
            self.test_alpha_index = alpha_index(alphas, test_alpha, "data.test_alpha", "the cached alphas")
        self.train_set = split(self.train_index, train_labels, None)
        self.val_set = split(self.val_index, labels[self.val_index], self.test_alpha_index)
        self.test_set = split(self.test_index, labels[self.test_index], self.test_alpha_index)
        self._train_generator: torch.Generator | None = None
        self._resume_state: dict[str, Any] | None = None
        if fold is None:
            from mer.data.au_graph import cooccurrence

            self.au_adjacency = cooccurrence(samples["aus"])  # every clip trains: every clip counts
            return
        graph = self.cache.fold_graph(fold)
        if str(graph["test_subject"]) != self.test_subject:
            raise ValueError(f"AU graph of fold {fold} is for {graph['test_subject']}, expected {self.test_subject}")
        self.au_adjacency = np.asarray(graph["adjacency"], dtype=np.float32)

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
