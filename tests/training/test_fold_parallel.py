"""Fold-parallel LOSO (mer/training/fold_parallel.py): stacking is exact, folds are independent, files match the
sequential path."""
from __future__ import annotations

import copy
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch.func import vmap
from torch.nn import functional as F

import mer.training.fold_parallel as fold_parallel
from mer.training.datamodule import LOSODataModule
from mer.training.fold_parallel import FoldBatches, FoldData, StackedModels, fold_splits
from mer.training.loso import resolve_cache, run_loso
from mer.training.fold import run_fold
from mer.models import build_model
from mer.models.blocks.encoder import attention, fast_dropout
from mer.cache import load_cache

REPO = Path(__file__).resolve().parents[2]
MODEL_YAML = REPO / "conf" / "model" / "layered_relations.yaml"

#: The one parameter whose gradient is zero in exact arithmetic: a conv bias followed by BatchNorm
#: (BN subtracts the batch mean). Its computed gradient is rounding noise, which Adam's first steps
#: turn into +-lr moves of either sign, so it is not comparable across two implementations.
ZERO_GRADIENT = "trunk.tokenizer.conv.bias"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: a second intra-op thread only adds synchronisation (and long waits on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def compose_train(*overrides: str):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.fixture(scope="module")
def tiny_overrides(tiny_corpus, tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("fold_parallel_cache")
    return [f"dataset.root={tiny_corpus}", "dataset.generate_if_missing=false", "preprocess_if_missing=true",
            f"paths.cache_dir={cache_dir}", "frames=2", "preprocess.workers=1", "trainer.max_epochs=2",
            "logger=csv", "data.batch_size=4"]


@pytest.fixture(scope="module")
def tiny_cache(tiny_overrides, tmp_path_factory):
    cfg = compose_train(*tiny_overrides, f"paths.output_dir={tmp_path_factory.mktemp('unused')}")
    return load_cache(resolve_cache(cfg))


def small_model(seed: int = 0, dropout: float = 0.1, adjacency: np.ndarray | None = None):
    """A layered-relations net with 2 + 3 ROIs, 2 paths, 2 layers per region: fast, every part present."""
    cfg = OmegaConf.load(MODEL_YAML)
    cfg.region_layers = 2
    cfg.encoder_dropout = dropout
    cfg.mlp_dropout = dropout
    cfg.mlp_hidden = [64, 32]
    torch.manual_seed(seed)
    if adjacency is None:
        adjacency = np.random.default_rng(0).random((9, 9)).astype(np.float32)
    return build_model(cfg, region_sizes=[2, 3], num_paths=2, num_classes=3, in_channels=1, au_adjacency=adjacency)


def random_batches(steps: int, folds: int, batch: int = 4, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(folds, batch, 2, 5, 1, 7, 7, generator=generator),
             torch.randint(0, 3, (folds, batch), generator=generator)) for _ in range(steps)]


def test_one_fold_reproduces_plain_training_step_by_step():
    model = small_model(dropout=0.0)
    stacked = StackedModels([copy.deepcopy(model)], lr=1e-4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    # Adam's early steps are about lr * sign(gradient): where a gradient is ~0, float rounding in a
    # batched matmul (vmap) versus a plain one can flip the step. A larger eps keeps the update a
    # smooth function of the gradient, so both paths must agree to 1e-5 everywhere.
    for group in (*stacked.optimizer.param_groups, *optimizer.param_groups):
        group["eps"] = 1e-3
    for step, (patches, labels) in enumerate(random_batches(6, folds=1)):
        model.train()
        loss = F.cross_entropy(model(patches[0]), labels[0])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        stacked_loss, stacked_logits = stacked.train_step(patches, labels)
        assert stacked_loss.shape == (1,) and stacked_logits.shape == (1, 4, 3)
        assert float(stacked_loss[0]) == pytest.approx(loss.item(), abs=1e-5), f"step {step}"
        for name, parameter in model.named_parameters():
            if name != ZERO_GRADIENT:
                torch.testing.assert_close(stacked.params[name][0], parameter.detach(), atol=1e-5, rtol=0,
                                           msg=lambda m: f"step {step}, {name}: {m}")
        torch.testing.assert_close(stacked.buffers["trunk.tokenizer.norm.running_var"][0],
                                   model.trunk.tokenizer.norm.running_var, atol=1e-5, rtol=0)
    # predict() is the fold's own model in evaluation mode (running statistics, no dropout).
    model.load_state_dict(stacked.fold_state(0))
    model.eval()
    patches = random_batches(1, folds=1, seed=7)[0][0][0]
    with torch.no_grad():
        torch.testing.assert_close(stacked.predict(0, patches), model(patches), atol=1e-5, rtol=0)


def test_folds_train_independently():
    """Changing fold 1's data and AU graph changes nothing of folds 0 and 2, dropout included."""
    batches = random_batches(3, folds=3)

    def train(fold1_adjacency, fold1_shift):
        models = [small_model(), small_model(adjacency=fold1_adjacency), small_model()]
        stacked = StackedModels(models, lr=1e-3)
        torch.manual_seed(123)  # the dropout masks
        for patches, labels in batches:
            patches, labels = patches.clone(), labels.clone()
            patches[1] += fold1_shift
            labels[1] = (labels[1] + int(fold1_shift)) % 3
            stacked.train_step(patches, labels)
        return stacked

    reference = train(None, 0.0)
    changed = train(np.eye(9, dtype=np.float32), 1.0)
    for name in reference.params:
        for f in (0, 2):
            assert torch.equal(reference.params[name][f], changed.params[name][f]), (name, f)
    for name in reference.buffers:
        for f in (0, 2):
            assert torch.equal(reference.buffers[name][f], changed.buffers[name][f]), (name, f)
    assert not torch.equal(reference.params["au_graphs.adjacency"][1], changed.params["au_graphs.adjacency"][1])
    # Each fold's BatchNorm statistics are its own: folds 0 and 2 saw different batches.
    running_mean = reference.buffers["trunk.tokenizer.norm.running_mean"]
    assert not torch.equal(running_mean[0], running_mean[2])


def test_encoder_attention_is_scaled_dot_product_attention_and_batches_under_vmap():
    q, k, v = (torch.randn(3, 5, 2, 7, 16) for _ in range(3))
    expected = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(attention(q, k, v), expected, atol=1e-6, rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing batching rule (a per-fold Python loop) would warn
        torch.testing.assert_close(vmap(attention)(q, k, v), expected, atol=1e-6, rtol=1e-5)
        masks = vmap(lambda x: fast_dropout(x, 0.5, True), randomness="different")(torch.ones(3, 1000))
    assert set(masks.unique().tolist()) == {0.0, 2.0}
    assert not torch.equal(masks[0], masks[1])  # each fold draws its own mask


@pytest.mark.parametrize(("sizes", "batch", "steps"), [([72] * 10, 32, [32, 32, 8]), ([5, 7], 4, [4, 3]), ([3], 4, [3])])
def test_an_epoch_gives_every_fold_n_max_clips_in_equal_steps(sizes, batch, steps):
    batches = FoldBatches(sizes, batch, num_alphas=3, num_paths=2, seed=0)
    assert batches.step_sizes == steps
    drawn = [batches.draw(size) for size in batches.step_sizes]
    positions = torch.cat([p for p, _ in drawn], dim=1)  # (F, n_max)
    alphas = torch.cat([a for _, a in drawn], dim=1)
    assert positions.shape == (len(sizes), max(sizes)) and alphas.shape == (len(sizes), max(sizes), 2)
    assert int(alphas.min()) >= 0 and int(alphas.max()) < 3
    for f, n in enumerate(sizes):
        seen = positions[f]
        assert int(seen.max()) < n
        # The first n of the epoch are one permutation of the fold's clips.
        assert sorted(seen[:n].tolist()) == list(range(n))


def test_fold_batches_are_the_sequential_dataloaders(tiny_cache):
    """Same seed, same clips, same order, same amplification factors, same scale: epoch after epoch."""
    data_module = LOSODataModule(tiny_cache.directory, 1, batch_size=4, seed=3, cache=tiny_cache)
    data_module.setup()
    loader = data_module.train_dataloader()
    sequential = [(batch["patches"], batch["label"]) for _ in range(3) for batch in loader]
    splits, test_alpha_index = fold_splits(tiny_cache, [1], seed=3)
    batches = FoldBatches([len(splits[0].train_rows)], 4, tiny_cache.patches.shape[1], tiny_cache.patches.shape[2], seed=3)
    data = FoldData(tiny_cache.patches, splits, test_alpha_index, torch.device("cpu"))
    stacked = [data.train_batch(*batches.draw(size)) for _ in range(3) for size in batches.step_sizes]
    assert len(stacked) == len(sequential) == 6
    for (patches, labels), (stacked_patches, stacked_labels) in zip(sequential, stacked):
        assert torch.equal(stacked_labels[0], labels)
        assert torch.equal(stacked_patches[0], patches)
    test = data.test_patches(0)
    expected = torch.stack([data_module.test_set[i]["patches"] for i in range(len(data_module.test_set))])
    assert torch.equal(test, expected)


def test_fold_splits_hold_the_folds_own_graph_and_scale(tiny_cache):
    splits, _ = fold_splits(tiny_cache, [0, 2])
    for split in splits:
        graph = tiny_cache.fold_graph(split.fold)
        assert split.test_subject == tiny_cache.subjects[split.fold] == str(graph["test_subject"])
        np.testing.assert_array_equal(split.au_adjacency, graph["adjacency"])
        subjects = tiny_cache.samples["subject"].to_numpy()
        assert set(subjects[split.train_rows.numpy()]) == set(tiny_cache.subjects) - {split.test_subject}
        assert set(subjects[split.test_rows.numpy()]) == {split.test_subject}
        expected_scale = float(torch.from_numpy(tiny_cache.patches[split.train_rows.numpy()]).std())
        assert split.scale == pytest.approx(expected_scale)
    assert splits[0].scale != splits[1].scale


def test_run_loso_fold_parallel_files_resume_and_interrupted_run(tiny_overrides, tmp_path, monkeypatch, caplog):
    overrides = [*tiny_overrides, "trainer.fold_parallel=true", "trainer.checkpoint_s=0"]
    summary = run_loso(compose_train(*overrides, f"paths.output_dir={tmp_path / 'a'}"), tmp_path / "a")
    assert summary["num_folds"] == 3 and summary["clips"] == 9
    predictions = pd.read_csv(tmp_path / "a" / "predictions.csv")
    assert list(predictions.columns[:6]) == ["fold", "dataset", "subject", "clip", "label", "prediction"]
    assert [c for c in predictions.columns if c.startswith("prob_")] == ["prob_negative", "prob_positive", "prob_surprise"]
    assert set(predictions.groupby("fold")["subject"].first()) == {"sub01", "sub02", "sub03"}
    for fold in range(3):
        assert (tmp_path / "a" / "logs" / f"fold_{fold:02d}" / "metrics.csv").is_file()
        assert (tmp_path / "a" / "folds" / f"fold_{fold:02d}" / "fold.json").is_file()
    assert not (tmp_path / "a" / fold_parallel.CHECKPOINT).exists()
    # Each fold records the model's size and its share of the joint training time; the summary their total.
    infos = [json.loads((tmp_path / "a" / "folds" / f"fold_{f:02d}" / "fold.json").read_text()) for f in range(3)]
    assert len({i["parameters"] for i in infos}) == 1 and len({i["train_seconds"] for i in infos}) == 1
    assert summary["parameters"] == infos[0]["parameters"] > 0
    assert summary["train_seconds"] == pytest.approx(3 * infos[0]["train_seconds"], abs=0.1)

    # An interrupted run (killed after its first epoch) resumes from its saved state and ends where
    # the uninterrupted run ended: same RNG streams, same numbers.
    calls = {"n": 0}
    original_step = StackedModels.train_step

    def dying_step(self, patches, labels):
        calls["n"] += 1
        if calls["n"] == 3:  # the first step of the second epoch (2 steps per epoch)
            raise KeyboardInterrupt("simulated kill")
        return original_step(self, patches, labels)

    monkeypatch.setattr(StackedModels, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        run_loso(compose_train(*overrides, f"paths.output_dir={tmp_path / 'b'}"), tmp_path / "b")
    assert (tmp_path / "b" / fold_parallel.CHECKPOINT).is_file()
    monkeypatch.setattr(StackedModels, "train_step", original_step)
    counted = {"n": 0}

    def counting_step(self, patches, labels):
        counted["n"] += 1
        return original_step(self, patches, labels)

    monkeypatch.setattr(StackedModels, "train_step", counting_step)
    with caplog.at_level(logging.INFO, logger="mer.training.fold_parallel"):
        resumed = run_loso(compose_train(*overrides, f"paths.output_dir={tmp_path / 'b'}"), tmp_path / "b")
    assert counted["n"] == 2 and "resumes after epoch 1" in caplog.text
    assert resumed["uf1"] == summary["uf1"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "b" / "predictions.csv"), predictions, atol=1e-6, rtol=0)

    # Resume: only the fold whose predictions are gone is trained again.
    (tmp_path / "b" / "folds" / "fold_01" / "predictions.csv").unlink()
    stamps = {f: (tmp_path / "b" / "folds" / f"fold_{f:02d}" / "predictions.csv").stat().st_mtime_ns for f in (0, 2)}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mer.training.fold_parallel"):
        run_loso(compose_train(*overrides, f"paths.output_dir={tmp_path / 'b'}"), tmp_path / "b")
    assert "training of folds [1]" in caplog.text
    for f, stamp in stamps.items():
        assert (tmp_path / "b" / "folds" / f"fold_{f:02d}" / "predictions.csv").stat().st_mtime_ns == stamp
    assert (tmp_path / "b" / "folds" / "fold_01" / "predictions.csv").is_file()


def test_fold_parallel_rejects_what_it_cannot_honour(tiny_overrides, tmp_path):
    cfg = compose_train(*tiny_overrides, "trainer.fold_parallel=true", "trainer.precision=16-mixed",
                        f"paths.output_dir={tmp_path}")
    with pytest.raises(ValueError, match="float32"):
        run_loso(cfg, tmp_path)
    cfg = compose_train(*tiny_overrides, "trainer.fold_parallel=true", "+callbacks.stop._target_=x.Y",
                        f"paths.output_dir={tmp_path}")
    with pytest.raises(ValueError, match="callbacks"):
        run_loso(cfg, tmp_path)


def test_fold_parallel_equals_the_lightning_fold_without_dropout(tiny_overrides, tmp_path):
    """Same seed, no dropout: the stacked path computes what Lightning's run_fold computes (up to rounding)."""
    overrides = [*tiny_overrides, "model.encoder_dropout=0", "model.mlp_dropout=0", "logger=none", "fold=1"]
    sequential_cfg = compose_train(*overrides, f"paths.output_dir={tmp_path / 'seq'}")
    sequential = run_fold(sequential_cfg, 1, load_cache(resolve_cache(sequential_cfg)), tmp_path / "seq")
    run_loso(compose_train(*overrides, "trainer.fold_parallel=true", f"paths.output_dir={tmp_path / 'par'}"),
             tmp_path / "par")
    stacked = pd.read_csv(tmp_path / "par" / "folds" / "fold_01" / "predictions.csv", dtype={"subject": str, "clip": str})
    assert list(stacked.columns) == list(sequential.columns)
    pd.testing.assert_frame_equal(stacked.drop(columns=[c for c in stacked if c.startswith("prob_")]),
                                  sequential.drop(columns=[c for c in sequential if c.startswith("prob_")]))
    probabilities = [c for c in stacked if c.startswith("prob_")]
    # Rounding differs (batched kernels, attention as plain matmuls) and Adam's normalised steps
    # carry it along; after 4 steps the probabilities still agree to well within 1e-3.
    np.testing.assert_allclose(stacked[probabilities].to_numpy(), sequential[probabilities].to_numpy(), atol=1e-3)
