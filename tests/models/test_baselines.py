"""The baseline networks: published parameter counts, gradients everywhere, shapes, stream independence, configs."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch.nn import functional as F

from mer.models import ARCHITECTURES, build_model, count_parameters, input_kind
from mer.models.dual_inception import DualInception
from mer.models.layered_relations import LayeredRelationsNet
from mer.models.linear_probe import LinearProbe
from mer.models.off_apexnet import OffApexNet
from mer.models.ststnet import STSTNet

CONF = Path(__file__).resolve().parents[2] / "conf"
FLOW_SHAPE = (3, 28, 28)
ROI_SHAPE = (12, 30, 1, 7, 7)   # the paper's N = 12 paths, 10 + 20 ROIs, 1 channel, 7 x 7 patches
FLOW_MODELS = {"ststnet": STSTNet, "off_apexnet": OffApexNet, "dual_inception": DualInception}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@functools.lru_cache(maxsize=None)
def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def build(name: str, num_classes: int = 3, input_shape=FLOW_SHAPE, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(compose_train(f"model={name}").model, num_classes=num_classes, input_shape=input_shape)


def flow_batch(batch: int = 4, shape=FLOW_SHAPE, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))


# --- Published sizes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [("ststnet", 1_683), ("off_apexnet", 2_664_475), ("dual_inception", 6_449_867)],
)
def test_published_parameter_counts_at_three_classes(name, expected):
    assert count_parameters(build(name)) == expected


def test_parameter_counts_by_hand():
    # STSTNet: per branch of f filters a 3x3 conv on 3 channels (27f + f) and a BatchNorm (2f); 400 -> 3 linear.
    assert sum(28 * f + 2 * f for f in (3, 5, 8)) + 400 * 3 + 3 == 1_683
    # OFF-ApexNet: per stream 5x5 convs 1 -> 6 and 6 -> 16; 1568 -> 1024 -> 1024 -> 3.
    stream = (25 * 6 + 6) + (6 * 25 * 16 + 16)
    assert 2 * stream + (1568 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * 3 + 3) == 2_664_475

    # Dual-Inception: a block of f filters per branch on c channels; 6272 -> 1024 -> 3.
    def block(c, f):
        one = c * f + f
        return one + (one + f * 9 * f + f) + (one + f * 25 * f + f) + one

    assert 2 * (block(1, 6) + block(24, 16)) + (6272 * 1024 + 1024) + (1024 * 3 + 3) == 6_449_867


def test_linear_probe_size_is_known_before_training():
    probe = build("linear_probe", input_shape=ROI_SHAPE)
    assert count_parameters(probe) == 12 * 30 * 49 * 3 + 3 == 52_923
    assert count_parameters(build("linear_probe", input_shape=FLOW_SHAPE)) == 28 * 28 * 3 * 3 + 3


def test_flow_models_size_follows_the_input():
    # A fourth (magnitude) channel widens STSTNet's convs only; the two-stream models read u and v alone.
    four = (4, 28, 28)
    assert count_parameters(build("ststnet", input_shape=four)) == 1_683 + 9 * (3 + 5 + 8)
    assert count_parameters(build("off_apexnet", input_shape=four)) == 2_664_475
    assert count_parameters(build("dual_inception", input_shape=four)) == 6_449_867
    # Five classes: only the output layer grows.
    assert count_parameters(build("ststnet", num_classes=5)) == 1_683 + 2 * 401


# --- Forward, backward, shapes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "input_shape"),
    [("ststnet", FLOW_SHAPE), ("off_apexnet", FLOW_SHAPE), ("dual_inception", FLOW_SHAPE),
     ("linear_probe", FLOW_SHAPE), ("linear_probe", ROI_SHAPE), ("ststnet", (4, 32, 32)),
     ("off_apexnet", (2, 28, 28)), ("dual_inception", (4, 20, 20))],
)
def test_every_parameter_gets_a_gradient(name, input_shape):
    model = build(name, num_classes=5, input_shape=input_shape).train()
    inputs = flow_batch(6, input_shape)
    logits = model(inputs)
    assert logits.shape == (6, 5)
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 3, 4, 0])).backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None, parameter_name
        assert parameter.grad.abs().sum() > 0, parameter_name


def test_ststnet_intermediate_shapes():
    model = build("ststnet").eval()
    images = flow_batch(2)
    maps = torch.cat([branch(images) for branch in model.branches], dim=1)
    assert maps.shape == (2, 16, 10, 10)
    assert model.pool(maps).shape == (2, 16, 5, 5)
    assert model.feature_dim == 400


@pytest.mark.parametrize("name", ["off_apexnet", "dual_inception"])
def test_two_stream_shapes(name):
    model = build(name).eval()
    images = flow_batch(2)
    channels = 16 if name == "off_apexnet" else 64
    assert model.stream_u(images[:, :1]).shape == (2, channels, 7, 7)
    assert model.stream_v(images[:, 1:2]).shape == (2, channels, 7, 7)
    assert model.feature_dim == 2 * channels * 49


def test_dual_inception_block_widths():
    model = build("dual_inception")
    first, second = model.stream_u.layers[0], model.stream_u.layers[2]
    x = torch.zeros(1, 1, 28, 28)
    assert first(x).shape == (1, 24, 28, 28)
    assert second(torch.zeros(1, 24, 14, 14)).shape == (1, 64, 14, 14)


# --- Two streams: separate weights, one channel each -----------------------------------------------------------


@pytest.mark.parametrize("name", ["dual_inception", "off_apexnet"])
def test_streams_share_no_parameter(name):
    model = build(name)
    u_params = {id(p) for p in model.stream_u.parameters()}
    v_params = {id(p) for p in model.stream_v.parameters()}
    assert u_params and v_params and not u_params & v_params
    # Nor storage: no tensor of one stream is a view of the other's.
    u_storage = {p.untyped_storage().data_ptr() for p in model.stream_u.parameters()}
    assert not u_storage & {p.untyped_storage().data_ptr() for p in model.stream_v.parameters()}


@pytest.mark.parametrize("name", ["dual_inception", "off_apexnet"])
def test_second_stream_reads_v_only(name):
    model = build(name).eval()
    images = flow_batch(3)
    changed = images.clone()
    changed[:, 0] = torch.randn(3, 28, 28, generator=torch.Generator().manual_seed(9))  # a different u
    changed[:, 2] = 0.0                                                                   # and strain
    with torch.no_grad():
        torch.testing.assert_close(model.stream_v(images[:, 1:2]), model.stream_v(changed[:, 1:2]))
        # Through the whole network: with the u stream's features held fixed, the output depends on v alone.
        u_features = model.stream_u(images[:, :1]).flatten(1)
        v_features = model.stream_v(changed[:, 1:2]).flatten(1)
        torch.testing.assert_close(model.classifier(torch.cat([u_features, v_features], 1)), model(images))
    # And by gradient: stream 2's output has no gradient with respect to u.
    images.requires_grad_(True)
    model.stream_v(images[:, 1:2]).sum().backward()
    assert images.grad[:, 0].abs().sum() == 0
    assert images.grad[:, 1].abs().sum() > 0


def test_first_stream_reads_u_only():
    model = build("dual_inception").eval()
    images = flow_batch(2).requires_grad_(True)
    model.stream_u(images[:, :1]).sum().backward()
    assert images.grad[:, 1:].abs().sum() == 0


# --- Configs and the builder -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"),
    [("ststnet", STSTNet), ("off_apexnet", OffApexNet), ("dual_inception", DualInception),
     ("linear_probe", LinearProbe)],
)
def test_model_config_builds_its_class(name, cls):
    cfg = compose_train(f"model={name}")
    assert cfg.model.name == name
    assert type(build(name)) is cls


def test_linear_probe_on_roi_patches_from_the_roi_arguments():
    # What mer's datamodule feeds today: the builder derives (N, R, C, p, p) with p from the ROI config.
    cfg = compose_train("model=linear_probe", "rois=face51")
    probe = build_model(cfg.model, num_classes=4, region_sizes=[10, 20], num_paths=12, in_channels=1,
                        au_adjacency=np.eye(9))
    assert probe.input_shape == ROI_SHAPE
    assert probe(torch.zeros(2, *ROI_SHAPE)).shape == (2, 4)


def test_layered_relations_still_builds_with_the_old_arguments():
    cfg = compose_train("model=layered_relations")
    model = build_model(cfg.model, region_sizes=[10, 20], num_paths=12, num_classes=4, in_channels=1,
                        au_adjacency=np.eye(9))
    assert isinstance(model, LayeredRelationsNet)
    assert count_parameters(model) == 2_500_082


def test_flow_model_without_input_shape_names_what_is_missing():
    cfg = compose_train("model=ststnet")
    with pytest.raises(ValueError, match="flow image.*input_shape"):
        build_model(cfg.model, num_classes=3, region_sizes=[10, 20], num_paths=12, in_channels=1,
                    au_adjacency=np.eye(9))


def test_roi_model_without_roi_arguments_names_them():
    with pytest.raises(ValueError, match="au_adjacency"):
        build_model(compose_train("model=layered_relations").model, num_classes=3, input_shape=FLOW_SHAPE)


def test_wrong_input_is_a_readable_error():
    with pytest.raises(ValueError, match=r"flow images \(B, 3, 28, 28\)"):
        build("ststnet")(torch.zeros(2, *ROI_SHAPE))
    with pytest.raises(ValueError, match="reads channels"):
        build("off_apexnet", input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match="only apply to"):
        build_model({"name": "x", "architecture": "ststnet", "roi_patch_size": 7}, num_classes=3,
                    input_shape=FLOW_SHAPE)
    with pytest.raises(ValueError, match="not settings"):
        build_model({"name": "x", "architecture": "ststnet", "filters": [1]}, num_classes=3, input_shape=FLOW_SHAPE)


def test_every_module_of_mer_models_is_an_architecture_that_declares_its_input():
    assert ARCHITECTURES.names() == ["dual_inception", "layered_relations", "linear_probe", "off_apexnet", "ststnet"]
    assert {name: input_kind(name) for name in ARCHITECTURES.names()} == {
        "dual_inception": "flow_image", "layered_relations": "roi_patches", "linear_probe": "any",
        "off_apexnet": "flow_image", "ststnet": "flow_image"}
    assert ARCHITECTURES.get("ststnet").build is STSTNet


# --- Published recipes -----------------------------------------------------------------------------------------

RECIPES = {
    # name: (model, optimiser, lr, weight decay > 0, batch, epochs)
    "layered_relations": ("layered_relations", "adam", 1e-4, False, 32, 25),
    "ststnet": ("ststnet", "adam", 5e-5, False, 256, 800),
    "off_apexnet": ("off_apexnet", "adam", 1e-4, False, None, None),
    "dual_inception": ("dual_inception", "sgd", None, False, None, None),
    "linear_probe": ("linear_probe", "adam", None, True, None, None),
    "linear_probe_flow": ("linear_probe", "adam", None, True, None, None),
}
#: The representation each recipe trains on.
RECIPE_INPUTS = {"linear_probe": "roi_patches", "linear_probe_flow": "flow_image"}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_bench_recipe(name):
    model, optimiser, lr, decay, batch, epochs = RECIPES[name]
    for cfg in (compose_train(f"experiment=bench/{name}"), compose_train(f"+experiment/bench={name}")):
        assert cfg.model.name == model
        assert cfg.optim.name == optimiser
        assert (cfg.optim.weight_decay > 0) == decay
        if lr is not None:
            assert cfg.optim.lr == pytest.approx(lr)
        if batch is not None:
            assert cfg.data.batch_size == batch
        if epochs is not None:
            assert cfg.trainer.max_epochs == epochs
        if optimiser == "sgd":
            assert cfg.optim.momentum > 0
        assert cfg.representation.name == RECIPE_INPUTS.get(name, input_kind(model))


def test_every_bench_recipe_is_in_the_sweep():
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        swept = list(parser.parse_overrides(["+experiment/bench=glob(*)"])[0].sweep_string_iterator())
    assert swept == sorted(RECIPES)


# --- End to end: the linear probe on today's ROI patches -------------------------------------------------------


@pytest.mark.slow
def test_linear_probe_recipe_trains_under_loso(tiny_corpus, tmp_path):
    """`experiment=bench/linear_probe` through both training paths on the tiny corpus (one fold, one epoch)."""
    from mer.training.loso import resolve_cache, run_loso
    from mer.training.fold import run_fold
    from mer.cache import load_cache

    overrides = [f"dataset.root={tiny_corpus}", "dataset.generate_if_missing=false", "preprocess_if_missing=true",
                 f"paths.cache_dir={tmp_path / 'cache'}", "frames=2", "preprocess.workers=1",
                 "experiment=bench/linear_probe", "trainer.max_epochs=1", "data.batch_size=4"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        # The default CSV logger writes the hyperparameters, the model config with its interpolation included.
        sequential_cfg = compose("train", overrides=[*overrides, "logger=csv", f"paths.output_dir={tmp_path / 'seq'}"])
        parallel_cfg = compose("train", overrides=[*overrides, "trainer.fold_parallel=true", "fold=0",
                                                   "optim.name=sgd", "optim.momentum=0.9", "logger=none",
                                                   f"paths.output_dir={tmp_path / 'par'}"])
    cache = load_cache(resolve_cache(sequential_cfg))
    sequential = run_fold(sequential_cfg, 0, cache, tmp_path / "seq")
    run_loso(parallel_cfg, tmp_path / "par")
    stacked = pd.read_csv(tmp_path / "par" / "folds" / "fold_00" / "predictions.csv", dtype={"subject": str})
    for table in (sequential, stacked):
        assert len(table) == 3 and set(table["prediction"]) <= {0, 1, 2}
    hparams = sorted((tmp_path / "seq").rglob("hparams.yaml"))
    assert hparams and "linear_probe" in hparams[0].read_text()


@pytest.mark.parametrize("name", ["ststnet", "off_apexnet", "dual_inception"])
def test_flow_models_stack_for_fold_parallel_training(name):
    """Under vmap (mer/training/fold_parallel.py) a stacked fold trains exactly like the plain model, BatchNorm included."""
    import copy

    from mer.training.fold_parallel import StackedModels

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={name}", "model.dropout=0"]).model
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=3, input_shape=FLOW_SHAPE)
    stacked = StackedModels([copy.deepcopy(model)], lr=0.05, optimizer="sgd", momentum=0.9)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(2)
    for _ in range(2):
        images = torch.randn(1, 4, *FLOW_SHAPE, generator=generator)
        labels = torch.randint(0, 3, (1, 4), generator=generator)
        stacked.train_step(images, labels)
        model.train()
        optimizer.zero_grad()
        F.cross_entropy(model(images[0]), labels[0]).backward()
        optimizer.step()
    for parameter_name, parameter in model.named_parameters():
        torch.testing.assert_close(stacked.params[parameter_name][0], parameter.detach(), atol=1e-5, rtol=0)
    for buffer_name, buffer in model.named_buffers():
        torch.testing.assert_close(stacked.buffers[buffer_name][0], buffer, atol=1e-5, rtol=0)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(stacked.predict(0, images[0]), model(images[0]), atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "conf" / "experiment"
                                                          / "bench").glob("*.yaml")))
def test_every_bench_recipe_trains_end_to_end(recipe, tiny_corpus, tmp_path):
    """Each leaderboard recipe, on its own representation, through train.py (two epochs, one fold of three)."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, str(repo / "train.py"), f"experiment=bench/{recipe}", f"dataset.root={tiny_corpus}",
         "dataset.generate_if_missing=false", "preprocess_if_missing=true", f"paths.cache_dir={tmp_path / 'cache'}",
         "preprocess.workers=1", "frames=2", "trainer.max_epochs=2", "data.batch_size=4", "fold=0",
         f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=repo, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    predictions = pd.read_csv(tmp_path / "run" / "folds" / "fold_00" / "predictions.csv")
    assert len(predictions) == 3 and set(predictions["subject"]) == {"sub01"}
    info = json.loads((tmp_path / "run" / "folds" / "fold_00" / "fold.json").read_text())
    assert info["parameters"] > 0 and info["train_seconds"] > 0
