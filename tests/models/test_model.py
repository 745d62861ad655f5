"""The layered-relations network: published size, gradients, batched == per-path loop, adjacency, configs."""
from __future__ import annotations

import functools
import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch.nn import functional as F

from mer.models import build_model
from mer.models.layered_relations import LayeredRelationsNet
from mer.models.blocks.au_graph import normalize_adjacency
from mer.models.blocks.encoder import fast_dropout

MODEL_CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# The layered-relations network and its ablations (the baselines, other architectures, are tested in
# tests/models/test_baselines.py): the configs that name no other architecture (an ablation inherits it).
MODEL_CONFIGS = sorted(
    path.stem for path in (MODEL_CONF_DIR / "model").glob("*.yaml")
    if OmegaConf.load(path).get("architecture", "layered_relations") == "layered_relations"
)
PAPER_REGIONS = [10, 20]  # eyebrows, mouth


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@functools.lru_cache(maxsize=None)
def compose_model_cfg(name: str, overrides: tuple[str, ...] = ()):
    """The `model` node as Hydra composes it for `model=NAME` (the defaults lists of the ablations applied)."""
    with initialize_config_dir(config_dir=str(MODEL_CONF_DIR), version_base=None):
        return compose(overrides=[f"+model={name}", *(f"model.{item}" for item in overrides)]).model


@pytest.fixture(scope="module")
def default_cfg():
    return compose_model_cfg("layered_relations")


@pytest.fixture
def co_occurrence() -> np.ndarray:
    """A P(j|i)-like 9x9 co-occurrence matrix: ones on the diagonal, asymmetric off it."""
    rng = np.random.default_rng(7)
    counts = rng.integers(0, 6, size=(9, 9)).astype(float)
    counts = np.triu(counts) + np.triu(counts, 1).T
    np.fill_diagonal(counts, counts.sum(axis=1) + 1)
    return counts / np.diag(counts)[:, None]


def make_model(cfg, adjacency, *, region_sizes=PAPER_REGIONS, num_paths=12, num_classes=4, in_channels=1, seed=0):
    torch.manual_seed(seed)
    return build_model(
        cfg, region_sizes=region_sizes, num_paths=num_paths, num_classes=num_classes,
        in_channels=in_channels, au_adjacency=adjacency,
    )


def random_patches(batch, num_paths, region_sizes, in_channels, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, num_paths, sum(region_sizes), in_channels, 7, 7, generator=generator)


def count(parameters) -> int:
    return sum(p.numel() for p in parameters if p.requires_grad)


# --- Fidelity -----------------------------------------------------------------------------------------------------


def test_published_parameter_count_and_parts(default_cfg, co_occurrence):
    model = make_model(default_cfg, co_occurrence)
    assert count(model.parameters()) == 2_500_082
    # The parts of the table in docs/design.md §1.8.
    trunk = model.trunk
    assert count(trunk.tokenizer.parameters()) == 360
    assert [count(stack.parameters()) for stack in trunk.region_encoders] == [228_324, 228_324]
    assert all(count(layer.parameters()) == 38_054 for stack in trunk.region_encoders for layer in stack)
    assert count(trunk.joint_encoder.parameters()) == 38_054
    assert count(trunk.projection.parameters()) == 1_806_860
    graphs = model.au_graphs
    assert (graphs.embeddings.numel(), graphs.weight_in.numel(), graphs.weight_out.numel()) == (4_320, 38_400, 153_600)
    assert graphs.adjacency.numel() == 972
    assert model.score_norm_weight.numel() + model.score_norm_bias.numel() == 216
    assert count(model.head_norm.parameters()) == 216
    assert count(model.classifier.parameters()) == 436


def test_every_parameter_receives_a_gradient(default_cfg, co_occurrence):
    model = make_model(default_cfg, co_occurrence).train()
    logits = model(random_patches(4, 12, PAPER_REGIONS, 1))
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    named = dict(model.named_parameters())
    assert "au_graphs.adjacency" in named
    missing = [name for name, p in named.items() if p.grad is None]
    zero = [name for name, p in named.items() if p.grad is not None and not p.grad.abs().gt(0).any()]
    assert missing == [] and zero == []
    # Every one of the 12 adjacencies is reached, not just some.
    assert named["au_graphs.adjacency"].grad.flatten(1).abs().sum(dim=1).gt(0).all()


def test_fast_dropout_is_inverted_dropout():
    x = torch.rand(200_000) + 1.0
    torch.manual_seed(0)
    out = fast_dropout(x, 0.1, training=True)
    dropped = out == 0
    assert abs(dropped.float().mean().item() - 0.1) < 0.005
    torch.testing.assert_close(out[~dropped], x[~dropped] / 0.9)
    assert fast_dropout(x, 0.1, training=False) is x and fast_dropout(x, 0.0, training=True) is x


def test_dropout_is_active_in_training_only(default_cfg, co_occurrence):
    model = make_model(default_cfg, co_occurrence)
    patches = random_patches(2, 12, PAPER_REGIONS, 1)
    with torch.no_grad():
        assert not torch.equal(model.train()(patches), model(patches))
        assert torch.equal(model.eval()(patches), model(patches))


# --- Equivalence with a plain per-path loop ---------------------------------------------------------------------


def oracle_encoder_layer(layer, x):
    """One post-norm encoder layer from its weights, attention written out (eval mode: no dropout)."""
    batch, length, _ = x.shape
    heads, head_dim = layer.heads, layer.head_dim

    def split_heads(t):
        return t.reshape(batch, length, heads, head_dim).permute(0, 2, 1, 3)

    q = split_heads(x @ layer.query.weight.T)
    k = split_heads(x @ layer.key.weight.T)
    v = split_heads(x @ layer.value.weight.T)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim), dim=-1)
    attended = (weights @ v).permute(0, 2, 1, 3).reshape(batch, length, heads * head_dim)
    x = F.layer_norm(
        x + attended @ layer.attn_out.weight.T + layer.attn_out.bias, x.shape[-1:],
        layer.norm_attn.weight, layer.norm_attn.bias, layer.norm_attn.eps,
    )
    hidden = torch.relu(x @ layer.ff_in.weight.T + layer.ff_in.bias)
    return F.layer_norm(
        x + hidden @ layer.ff_out.weight.T + layer.ff_out.bias, x.shape[-1:],
        layer.norm_ff.weight, layer.norm_ff.bias, layer.norm_ff.eps,
    )


def oracle_forward(model, patches):
    """The network evaluated one path at a time, in plain loops, from the model's weights (eval mode)."""
    trunk = model.trunk
    conv, norm = trunk.tokenizer.conv, trunk.tokenizer.norm
    paths = [patches.shape[1] - 1] if model.paths == "last" else range(patches.shape[1])
    scores = []
    for slot, n in enumerate(paths):
        x = patches[:, n]  # (B, R, C, 7, 7)
        batch, rois = x.shape[:2]
        x = F.conv2d(x.reshape(batch, -1, 7, 7), conv.weight, conv.bias, padding=1, groups=rois)
        x = (x - norm.running_mean[:, None, None]) / torch.sqrt(norm.running_var[:, None, None] + norm.eps)
        x = torch.relu(x * norm.weight[:, None, None] + norm.bias[:, None, None])
        tokens = x.reshape(batch, rois, 49)
        if len(trunk.region_encoders):
            outputs, start = [], 0
            for size, stack in zip(model.region_sizes, trunk.region_encoders):
                region = tokens[:, start:start + size]
                for layer in stack:
                    region = oracle_encoder_layer(layer, region)
                outputs.append(region)
                start += size
            tokens = torch.cat(outputs, dim=1)
        for layer in trunk.joint_encoder:
            tokens = oracle_encoder_layer(layer, tokens)
        feature = tokens.reshape(batch, -1)
        for module in trunk.projection:
            if isinstance(module, torch.nn.Linear):
                feature = torch.relu(feature @ module.weight.T + module.bias)
        if model.fusion == "au_graph":
            graphs = model.au_graphs
            adjacency = graphs.adjacency[slot]
            hidden = F.leaky_relu(adjacency @ graphs.embeddings[slot] @ graphs.weight_in[slot], 0.2)
            au_vectors = F.leaky_relu(adjacency @ hidden @ graphs.weight_out[slot], 0.2)  # (9, 160)
            path_scores = feature @ au_vectors.T
        else:
            path_scores = feature @ model.score_weight[slot].T + model.score_bias[slot]
        path_scores = F.layer_norm(path_scores, (path_scores.shape[-1],), eps=model.score_norm_eps)
        scores.append(path_scores * model.score_norm_weight[slot] + model.score_norm_bias[slot])
    joined = torch.cat(scores, dim=1)
    joined = F.layer_norm(joined, joined.shape[-1:], model.head_norm.weight, model.head_norm.bias, model.head_norm.eps)
    return joined @ model.classifier.weight.T + model.classifier.bias


def perturb_norms(model, seed=3):
    """Give every norm layer and BN statistic non-default values so the oracle checks their use."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if "norm" in name and tensor.is_floating_point():
                noise = torch.rand(tensor.shape, generator=generator)
                tensor.copy_(0.5 + noise if ("weight" in name or "var" in name) else noise - 0.5)


@pytest.mark.parametrize("name", MODEL_CONFIGS)
@pytest.mark.parametrize(
    ("num_paths", "region_sizes", "in_channels"), [(12, PAPER_REGIONS, 1), (3, [4, 5, 3], 3)]
)
def test_batched_forward_equals_per_path_loop(name, num_paths, region_sizes, in_channels, co_occurrence):
    model = make_model(
        compose_model_cfg(name), co_occurrence, region_sizes=region_sizes, num_paths=num_paths, in_channels=in_channels
    )
    perturb_norms(model)
    model.eval()
    patches = random_patches(3, num_paths, region_sizes, in_channels)
    with torch.no_grad():
        batched, looped = model(patches), oracle_forward(model, patches)
    torch.testing.assert_close(batched, looped, rtol=0, atol=1e-5)


def test_one_path_reads_only_the_onset_to_apex_path(co_occurrence):
    model = make_model(compose_model_cfg("one_path"), co_occurrence).eval()
    patches = random_patches(3, 12, PAPER_REGIONS, 1)
    scrambled = patches.clone()
    scrambled[:, :-1] = torch.randn_like(scrambled[:, :-1])
    with torch.no_grad():
        torch.testing.assert_close(model(patches), model(scrambled), rtol=0, atol=0)
        assert not torch.allclose(model(patches), model(random_patches(3, 12, PAPER_REGIONS, 1, seed=9)))
    assert model.head_norm.normalized_shape == (9,)


# --- The adjacency ----------------------------------------------------------------------------------------------


def test_normalize_adjacency_by_hand():
    a = np.array([[0.0, 1.0], [0.5, 0.0]])
    # A + I = [[1, 1], [0.5, 1]], row degrees d = [2, 1.5]; entry (i, j) / sqrt(d_i d_j).
    expected = torch.tensor([[1 / 2, 1 / math.sqrt(3)], [0.5 / math.sqrt(3), 1 / 1.5]])
    torch.testing.assert_close(normalize_adjacency(a), expected)
    torch.testing.assert_close(normalize_adjacency(torch.tensor(a)), expected)  # a tensor as well as an array


@pytest.mark.parametrize(
    ("bad", "message"), [(np.ones((3, 4)), "square"), (-np.eye(3), "non-negative"), (np.full((2, 2), np.nan), "finite")]
)
def test_normalize_adjacency_rejects_bad_graphs(bad, message):
    with pytest.raises(ValueError, match=message):
        normalize_adjacency(bad)


def test_adjacency_is_a_learnable_registered_parameter(default_cfg, co_occurrence):
    model = make_model(default_cfg, co_occurrence)
    adjacency = dict(model.named_parameters())["au_graphs.adjacency"]
    assert adjacency.requires_grad and adjacency.shape == (12, 9, 9)
    expected = normalize_adjacency(co_occurrence)
    for path in range(12):
        torch.testing.assert_close(adjacency[path].detach(), expected)
    assert "au_graphs.adjacency" in model.state_dict()

    before = adjacency.detach().clone()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    F.cross_entropy(model(random_patches(4, 12, PAPER_REGIONS, 1)), torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    assert not torch.equal(adjacency.detach(), before)  # trained

    # Saved and restored: a model built on another fold's graph takes the learned matrices back.
    other = make_model(default_cfg, np.eye(9), seed=5)
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(other.au_graphs.adjacency, adjacency)


def test_fixed_adjacency_is_a_saved_buffer(co_occurrence):
    model = make_model(compose_model_cfg("fixed_adjacency"), co_occurrence)
    assert "au_graphs.adjacency" not in dict(model.named_parameters())
    assert "au_graphs.adjacency" in model.state_dict()
    assert count(model.parameters()) == 2_500_082 - 972
    initial = normalize_adjacency(co_occurrence).expand(12, 9, 9)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    F.cross_entropy(model(random_patches(4, 12, PAPER_REGIONS, 1)), torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    torch.testing.assert_close(model.au_graphs.adjacency, initial)


# --- Configs, shapes, errors ------------------------------------------------------------------------------------


def test_every_model_config_is_tested():
    expected = {"layered_relations", "no_region_layer", "no_joint_layer", "no_au_graph", "fixed_adjacency", "one_path"}
    assert expected <= set(MODEL_CONFIGS)


@pytest.mark.parametrize("name", MODEL_CONFIGS)
@pytest.mark.parametrize(
    ("num_paths", "region_sizes", "in_channels", "num_classes"),
    [(1, [6], 1, 2), (4, [2, 3, 4, 5], 3, 5)],
)
def test_configs_build_and_train(name, num_paths, region_sizes, in_channels, num_classes, co_occurrence):
    cfg = compose_model_cfg(name)
    assert cfg.name == name
    model = make_model(
        cfg, co_occurrence, region_sizes=region_sizes, num_paths=num_paths, num_classes=num_classes,
        in_channels=in_channels,
    ).train()
    logits = model(random_patches(3, num_paths, region_sizes, in_channels))
    assert logits.shape == (3, num_classes)
    F.cross_entropy(logits, torch.arange(3) % num_classes).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_ablation_switches_change_the_network(co_occurrence):
    sizes = {name: count(make_model(compose_model_cfg(name), co_occurrence).parameters()) for name in MODEL_CONFIGS}
    full = sizes["layered_relations"]
    assert full - sizes["no_region_layer"] == 2 * 228_324
    assert full - sizes["no_joint_layer"] == 38_054
    assert full - sizes["fixed_adjacency"] == 972
    # The graph (embeddings, GCN, adjacency) replaced by a linear 160 -> 9 with bias, per path.
    assert full - sizes["no_au_graph"] == (4_320 + 38_400 + 153_600 + 972) - 12 * (9 * 160 + 9)
    # One path: 11 paths' graph parts and score norms fewer, a LayerNorm(9) + Linear 9 -> 4 head.
    per_path = (4_320 + 38_400 + 153_600 + 972 + 216) // 12
    assert full - sizes["one_path"] == 11 * per_path + (216 + 436) - (18 + 40)


def test_constructor_defaults_are_the_config_defaults(default_cfg):
    """The published sizes live in the YAML; the class's keyword defaults must not drift from them."""
    signature = inspect.signature(LayeredRelationsNet).parameters
    settings = OmegaConf.to_container(default_cfg, resolve=True)
    del settings["name"], settings["architecture"]
    assert settings.keys() == {key for key, p in signature.items() if p.default is not inspect.Parameter.empty}
    for key, value in settings.items():
        default = signature[key].default
        assert (list(default) if isinstance(default, tuple) else default) == value, key


def test_model_overrides_and_errors(co_occurrence):
    smaller = compose_model_cfg("layered_relations", ("region_layers=2", "mlp_hidden=[64]", "feature_dim=32"))
    model = make_model(smaller, co_occurrence, num_paths=2)
    assert len(model.trunk.region_encoders[0]) == 2 and model.au_graphs.weight_out.shape == (2, 80, 32)

    defaults = OmegaConf.to_container(compose_model_cfg("layered_relations"))
    bad = {**defaults, "region_layer": 3}
    with pytest.raises(ValueError, match="region_layer"):
        make_model(bad, co_occurrence)
    raw = OmegaConf.load(MODEL_CONF_DIR / "model" / "one_path.yaml")  # not composed: defaults list unapplied
    with pytest.raises(ValueError, match="compose it with Hydra"):
        make_model(raw, co_occurrence)
    with pytest.raises(ValueError, match="fusion"):
        make_model({**defaults, "fusion": "mean"}, co_occurrence)

    model = make_model(compose_model_cfg("layered_relations"), co_occurrence)
    with pytest.raises(ValueError, match=r"\(B, 12, 30, 1, 7, 7\).*got \(2, 12, 29, 1, 7, 7\)"):
        model(torch.zeros(2, 12, 29, 1, 7, 7))


def test_same_seed_same_initialisation(default_cfg, co_occurrence):
    first = make_model(default_cfg, co_occurrence, seed=11).state_dict()
    second = make_model(default_cfg, co_occurrence, seed=11).state_dict()
    third = make_model(default_cfg, co_occurrence, seed=12).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not torch.equal(first["trunk.projection.0.weight"], third["trunk.projection.0.weight"])
    assert not torch.equal(first["au_graphs.embeddings"], third["au_graphs.embeddings"])


# --- The fast paths of the encoder layer against their references -------------------------------------------------


def assert_same_input_gradients(first: torch.Tensor, second: torch.Tensor, first_inputs: list[torch.Tensor],
                                second_inputs: list[torch.Tensor], generator: torch.Generator) -> None:
    """Back-propagate one random upstream gradient through both outputs; their inputs' gradients agree to 1e-5."""
    upstream = torch.randn(first.shape, generator=generator)
    (first * upstream).sum().backward()
    (second * upstream).sum().backward()
    for a, b in zip(first_inputs, second_inputs):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-5)


def test_fused_attention_equals_written_out_attention_with_gradients():
    from mer.models.blocks.encoder import attention, fused_attention

    generator = torch.Generator().manual_seed(5)
    inputs = [torch.randn(6, 8, 20, 16, generator=generator, requires_grad=True) for _ in range(3)]
    copies = [t.detach().clone().requires_grad_() for t in inputs]
    # The fused kernel itself (what fused_attention runs on CUDA; on CPU it runs the written-out one).
    fast, slow = F.scaled_dot_product_attention(*inputs), attention(*copies)
    torch.testing.assert_close(fused_attention(*inputs).detach(), slow.detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-5)
    assert_same_input_gradients(fast, slow, inputs, copies, generator)


@pytest.mark.parametrize("length", [10, 20])
def test_attention_normalised_over_keys_on_rows_equals_the_row_softmax(monkeypatch, length):
    """The transposed-scores path (short sequences on AVX-512) gives the weights, outputs and gradients of the other."""
    import mer.models.blocks.encoder as encoder

    generator = torch.Generator().manual_seed(7)
    inputs = [torch.randn(5, 8, length, 16, generator=generator, requires_grad=True) for _ in range(3)]
    copies = [t.detach().clone().requires_grad_() for t in inputs]
    capability = encoder._cpu_capability()
    monkeypatch.setattr(encoder, "_SHORT_ROW_CAPABILITIES", {capability: 64})  # every length below 64
    assert encoder._keys_on_rows(inputs[0])
    transposed = encoder.attention(*inputs)
    monkeypatch.setattr(encoder, "_SHORT_ROW_CAPABILITIES", {})
    assert not encoder._keys_on_rows(inputs[0])
    rows = encoder.attention(*copies)
    torch.testing.assert_close(transposed, rows, rtol=0, atol=1e-6)
    assert_same_input_gradients(transposed, rows, inputs, copies, generator)


def test_fused_attention_under_vmap_takes_the_batchable_path():
    import warnings

    from torch.func import vmap

    from mer.models.blocks.encoder import attention, fused_attention

    q, k, v = (torch.randn(3, 4, 2, 10, 16) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fused kernel's missing batching rule would warn (a per-fold loop)
        batched = vmap(fused_attention)(q, k, v)
    torch.testing.assert_close(batched, attention(q, k, v), rtol=0, atol=1e-6)


def test_encoder_layer_training_step_equals_the_three_projection_oracle(default_cfg, co_occurrence):
    """One q/k/v matmul and the fused attention give the outputs and weight gradients of the written-out layer."""
    layer = make_model(default_cfg, co_occurrence).trunk.region_encoders[1][0]
    layer.train()
    layer.dropout = 0.0  # the same draws cannot be replayed by the oracle; everything else is as in training
    x = torch.randn(16, 20, 49, generator=torch.Generator().manual_seed(2))
    fast = layer(x)
    fast.square().sum().backward()
    fast_grads = {name: p.grad.clone() for name, p in layer.named_parameters()}
    layer.zero_grad()
    slow = oracle_encoder_layer(layer, x)
    slow.square().sum().backward()
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-5)
    for name, p in layer.named_parameters():
        torch.testing.assert_close(fast_grads[name], p.grad, rtol=1e-4, atol=1e-4, msg=name)
    assert sorted(dict(layer.named_parameters())) == sorted(
        f"{module}.{kind}" for module, kinds in [("query", ["weight"]), ("key", ["weight"]), ("value", ["weight"]),
                                                  ("attn_out", ["weight", "bias"]), ("norm_attn", ["weight", "bias"]),
                                                  ("ff_in", ["weight", "bias"]), ("ff_out", ["weight", "bias"]),
                                                  ("norm_ff", ["weight", "bias"])] for kind in kinds
    )
