"""trainer.compile: torch.compile of the network, its fallback, and the same outputs as the eager network."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mer.models import build_model
from mer.training import compiled as compiled_module
from mer.training.compiled import compile_model, cpp_compiler


def tiny_model():
    """The layered-relations network with one layer per stack and two paths: small enough to compile in a test."""
    cfg = OmegaConf.load("conf/model/layered_relations.yaml")
    cfg.region_layers = 1
    torch.manual_seed(0)
    return build_model(cfg, region_sizes=[3, 4], num_paths=2, num_classes=3, in_channels=1,
                       au_adjacency=np.eye(9) * 0.5 + 0.1)


@pytest.mark.slow  # inductor compiles forward and backward: 1-4 minutes on 2 cores
@pytest.mark.skipif(cpp_compiler() is None, reason="no C++ compiler: torch.compile cannot build CPU kernels")
def test_compiled_and_eager_give_the_same_outputs_and_gradients(one_torch_thread):
    model = tiny_model().eval()  # no dropout: both must see the same arithmetic
    patches = torch.randn(4, 2, 7, 1, 7, 7, generator=torch.Generator().manual_seed(1))
    network, how = compile_model(model)
    assert how == "compiled"
    out = network(patches)
    assert network.failed is None, network.failed  # it really ran compiled
    eager = model(patches)
    torch.testing.assert_close(out, eager, rtol=0, atol=1e-5)
    out.square().sum().backward()
    compiled_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    eager.square().sum().backward()
    for mine, reference in zip(compiled_grads, (p.grad for p in model.parameters())):
        torch.testing.assert_close(mine, reference, rtol=1e-4, atol=1e-5)


def test_without_a_compiler_the_eager_network_runs(monkeypatch):
    monkeypatch.setattr(compiled_module, "cpp_compiler", lambda: None)
    model = tiny_model()
    network, how = compile_model(model)
    assert network is model and how == "eager (no C++ compiler)"


def test_a_failing_compilation_falls_back_to_eager(caplog):
    model = tiny_model().eval()
    patches = torch.randn(2, 2, 7, 1, 7, 7)

    def broken(*args):
        raise RuntimeError("backend compiler failed")

    wrapper = compiled_module._EagerOnFailure(broken, model)
    torch.testing.assert_close(wrapper(patches), model(patches))
    assert isinstance(wrapper.failed, RuntimeError) and "running the eager network" in caplog.text
    torch.testing.assert_close(wrapper(patches), model(patches))


def test_the_lightning_module_keeps_the_eager_state_dict():
    from mer.training.module import MERModule

    cfg = OmegaConf.load("conf/model/layered_relations.yaml")
    plain = MERModule(cfg, [10, 20], 12, 4, 1, np.eye(9), ["a", "b", "c", "d"])
    lazy = MERModule(cfg, [10, 20], 12, 4, 1, np.eye(9), ["a", "b", "c", "d"], compile=True)  # compiles on first call
    assert list(plain.state_dict()) == list(lazy.state_dict())
