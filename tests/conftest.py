"""Shared fixtures: a tiny synthetic corpus (generated once per test session) and its dataset config."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from mer.synthetic import generate_corpus

REPO_ROOT = Path(__file__).resolve().parents[1]

#: Generator settings of the tiny corpus: 3 subjects x 3 clips (one per class and subject), 24-30 frames each.
TINY_CORPUS = {"seed": 0, "subjects": 3, "clips_per_subject": 3, "frames_per_clip": (24, 30), "workers": 1}


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a 3-subject x 3-clip synthetic corpus in the CASME II layout (read-only: copy before changing)."""
    return generate_corpus(tmp_path_factory.mktemp("tiny") / "synthetic", **TINY_CORPUS)


@pytest.fixture(scope="session")
def synthetic_dataset_yaml() -> DictConfig:
    """``conf/dataset/synthetic.yaml`` as loaded (its ``root`` still points at ``${paths.data_dir}``)."""
    return OmegaConf.load(REPO_ROOT / "conf" / "dataset" / "synthetic.yaml")


@pytest.fixture
def tiny_dataset_cfg(tiny_corpus: Path, synthetic_dataset_yaml: DictConfig) -> DictConfig:
    """The ``dataset`` config node of the synthetic corpus with ``root`` set to :func:`tiny_corpus` (a fresh copy
    per test, so tests may change it)."""
    cfg = synthetic_dataset_yaml.copy()
    cfg.root = str(tiny_corpus)
    cfg.generate_if_missing = False
    return cfg


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tiny tensors on one intra-op thread: on a busy 2-core machine, OpenMP hand-offs
    between two threads make them up to 10x slower. Restores the previous setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
