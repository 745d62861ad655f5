"""optim.name: Adam or SGD, honoured by the LightningModule and by fold-parallel training alike."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch.nn import functional as F

from mer.training.fold_parallel import StackedModels
from mer.training.module import MERModule
from mer.training.optim import build_optimizer

REPO = Path(__file__).resolve().parents[2]
PROBE = {"name": "linear_probe", "architecture": "linear_probe", "roi_patch_size": 7}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def compose_train(*overrides: str):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_build_optimizer():
    weight = torch.nn.Parameter(torch.zeros(3))
    adam = build_optimizer([weight], "adam", lr=1e-3, weight_decay=1e-4)
    assert type(adam) is torch.optim.Adam and adam.defaults["lr"] == 1e-3 and adam.defaults["weight_decay"] == 1e-4
    sgd = build_optimizer([weight], "SGD", lr=1e-2, momentum=0.9)
    assert type(sgd) is torch.optim.SGD and sgd.defaults["momentum"] == 0.9
    with pytest.raises(ValueError, match="unknown optim.name 'rmsprop'"):
        build_optimizer([weight], "rmsprop")
    with pytest.raises(ValueError, match="sgd only"):
        build_optimizer([weight], "adam", momentum=0.9)


def test_default_config_is_adam():
    cfg = compose_train()
    assert cfg.optim.name == "adam" and cfg.optim.momentum == 0.0


def module(**optim):
    return MERModule(PROBE, region_sizes=[2, 3], num_paths=2, num_classes=3, in_channels=1,
                     au_adjacency=np.eye(9, dtype=np.float32), class_names=["a", "b", "c"], **optim)


def test_lightning_module_builds_the_named_optimiser():
    assert type(module().configure_optimizers()) is torch.optim.Adam
    sgd = module(lr=0.05, optimizer="sgd", momentum=0.9, weight_decay=1e-3).configure_optimizers()
    assert type(sgd) is torch.optim.SGD
    assert (sgd.defaults["lr"], sgd.defaults["momentum"], sgd.defaults["weight_decay"]) == (0.05, 0.9, 1e-3)


def test_stacked_sgd_is_one_sgd_per_fold():
    torch.manual_seed(0)
    models = [module().model, module().model]
    plain = [copy.deepcopy(m) for m in models]
    stacked = StackedModels(models, lr=0.1, optimizer="sgd", momentum=0.9, weight_decay=1e-3)
    assert type(stacked.optimizer) is torch.optim.SGD
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3) for m in plain]
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        patches = torch.randn(2, 4, 2, 5, 1, 7, 7, generator=generator)
        labels = torch.randint(0, 3, (2, 4), generator=generator)
        stacked.train_step(patches, labels)
        for f, (model, optimizer) in enumerate(zip(plain, optimizers)):
            optimizer.zero_grad()
            F.cross_entropy(model(patches[f]), labels[f]).backward()
            optimizer.step()
    for f, model in enumerate(plain):
        for name, parameter in model.named_parameters():
            torch.testing.assert_close(stacked.params[name][f], parameter.detach(), atol=1e-6, rtol=0)


def test_a_sequential_fold_trains_with_the_configured_optimiser(tiny_corpus, tmp_path, monkeypatch):
    """``optim.name`` reaches the LightningModule of an ordinary (not fold-parallel) fold."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    import mer.training.fold as fold
    from mer.training.loso import resolve_cache
    from mer.cache import load_cache

    seen = {}

    class Stop(Exception):
        pass

    def capture(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(fold, "MERModule", capture)
    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(str(conf), version_base="1.3"):
        cfg = compose("train", overrides=[
            f"dataset.root={tiny_corpus}", "dataset.generate_if_missing=false", "preprocess_if_missing=true",
            f"paths.cache_dir={tmp_path / 'cache'}", "frames=2", "preprocess.workers=1", "logger=none",
            f"paths.output_dir={tmp_path / 'out'}", "optim.name=sgd", "optim.momentum=0.9"])
    with pytest.raises(Stop):
        fold.run_fold(cfg, 0, load_cache(resolve_cache(cfg)), tmp_path / "out")
    assert seen["optimizer"] == "sgd" and seen["momentum"] == 0.9


def test_optim_settings_read_the_config_node_typed():
    from mer.training.optim import OptimSettings

    assert OptimSettings.from_config({"name": "SGD", "lr": 1, "momentum": 0.9}) == OptimSettings("sgd", 1.0, 0.0, 0.9)
    assert OptimSettings.from_config(None) == OptimSettings()
    settings = OptimSettings.from_config({"name": "adam", "lr": 1e-3, "weight_decay": 1e-5})
    assert isinstance(settings.lr, float) and settings.weight_decay == 1e-5 and settings.momentum == 0.0
