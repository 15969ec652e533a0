"""Model layout, the Lasso term and dropout behaviour."""

import pytest
import torch
from torch import nn

from ae_core.config import ModelConfig
from ae_core.model import Autoencoder, l1_penalty, layer_widths
from ae_core.train import objective


def _linear_layers(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("depth", [3, 5])
def test_encoder_depth_and_mirror(depth):
    model = Autoencoder(ModelConfig.make(depth=depth, latent_dim=30))
    encoder = _linear_layers(model.encoder)
    decoder = _linear_layers(model.decoder)
    assert len(encoder) == depth
    assert len(decoder) == depth
    assert [l.out_features for l in encoder] == layer_widths(depth, 30)[1:]
    assert [l.in_features for l in decoder] == [l.out_features for l in reversed(encoder)]
    assert decoder[-1].out_features == 784


@pytest.mark.parametrize("latent_dim", [2, 15, 100, 784])
def test_output_shape_and_range(latent_dim):
    model = Autoencoder(ModelConfig.make(latent_dim=latent_dim)).eval()
    x = torch.rand(7, 784)
    with torch.no_grad():
        x_hat = model(x)
    assert x_hat.shape == (7, 784)
    assert float(x_hat.min()) >= 0.0
    assert float(x_hat.max()) <= 1.0
    assert model.encoder(x).shape == (7, latent_dim)


def test_l1_penalty_known_values_excludes_biases():
    model = Autoencoder(ModelConfig.make(depth=3, latent_dim=15))
    widths = layer_widths(3, 15)
    with torch.no_grad():
        for value, layer in zip([0.5, -0.25, 2.0], _linear_layers(model.encoder)):
            layer.weight.fill_(value)
            layer.bias.fill_(1000.0)  # must not count
        for layer in _linear_layers(model.decoder):
            layer.weight.fill_(1000.0)  # decoder weights must not count either
    expected = 0.5 * widths[0] * widths[1] + 0.25 * widths[1] * widths[2] + 2.0 * widths[2] * widths[3]
    assert l1_penalty(model).item() == pytest.approx(expected, rel=1e-6)


def test_lasso_term_same_at_batch_32_and_256():
    model = Autoencoder(ModelConfig.make(regularizer="lasso", latent_dim=30))
    lam = 1e-3
    terms = []
    for batch in (32, 256):
        x = torch.rand(batch, 784, generator=torch.Generator().manual_seed(batch))
        loss, recon = objective(model, x, x, lam)
        terms.append((loss - recon).item())
    assert terms[0] == pytest.approx(lam * l1_penalty(model).item(), rel=1e-4)
    assert terms[0] == pytest.approx(terms[1], rel=1e-5)


def test_dropout_identical_in_eval_random_in_train():
    model = Autoencoder(ModelConfig.make(regularizer="dropout", strength=0.5, latent_dim=30))
    x = torch.rand(16, 784)
    model.eval()
    first, second = model(x), model(x)
    assert torch.equal(first, second)
    model.train()
    assert not torch.equal(model(x), model(x))


def test_dropout_only_after_hidden_layers():
    model = Autoencoder(ModelConfig.make(regularizer="dropout", depth=5, latent_dim=15))
    names = [type(m).__name__ for m in model.encoder]
    # every Linear but the last is followed by ReLU and dropout; the code layer is linear
    assert names.count("SeededDropout") == 4
    assert names[-1] == "Identity"
    assert type(model.decoder[-1]).__name__ == "Sigmoid"


def test_same_seed_same_initial_weights():
    first = Autoencoder(ModelConfig.make(seed=3)).state_dict()
    second = Autoencoder(ModelConfig.make(seed=3)).state_dict()
    other = Autoencoder(ModelConfig.make(seed=4)).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
