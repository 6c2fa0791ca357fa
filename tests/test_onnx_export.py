"""Real ONNX export of tiny networks, checked against PyTorch in onnxruntime."""

import numpy as np
import pytest
import torch

from same_defense.export.onnx_export import (
    RECONSTRUCTOR_IO,
    VICTIM_IO,
    export_onnx,
    max_abs_difference,
    session,
)
from same_defense.models import PRESETS, MaskedAutoencoder, ReconstructorGraph, build_classifier


@pytest.fixture(scope="module")
def graphs():
    torch.manual_seed(0)
    victim = build_classifier("cnn3", (1, 28, 28), 10).eval()
    mae = MaskedAutoencoder((1, 28, 28), PRESETS["tiny"].mae).eval()
    shadow = build_classifier("cnn3", (1, 28, 28), 10).eval()
    return victim, ReconstructorGraph(mae, shadow).eval()


def test_victim_onnx_matches_pytorch_with_dynamic_batch(graphs, tmp_path):
    victim, _ = graphs
    x = np.random.default_rng(0).random((7, 1, 28, 28), dtype=np.float32)
    path = export_onnx(victim, x[:2], tmp_path / "victim.onnx", VICTIM_IO)
    assert max_abs_difference(victim, path, x) < 1e-4
    assert session(path).run(None, {"IMAGE": x})[0].shape == (7, 10)


def test_reconstructor_onnx_matches_pytorch_and_reports_input_stats(graphs, tmp_path):
    _, graph = graphs
    x = np.random.default_rng(1).random((5, 1, 28, 28), dtype=np.float32)
    path = export_onnx(graph, x[:2], tmp_path / "rec.onnx", RECONSTRUCTOR_IO)
    assert max_abs_difference(graph, path, x) < 1e-4
    bad = x.copy()
    bad[1, 0, 0, 0] = np.nan
    bad[2, 0, 3, 3] = np.inf
    bad[3] *= 255
    error, shadow, stats = session(path).run(None, {"IMAGE": bad})
    assert error.shape == (5, 1) and shadow.shape == (5, 10) and stats.shape == (5, 3)
    np.testing.assert_array_equal(stats[:, 0], [0, 1, 1, 0, 0])
    assert stats[3, 2] > 200 and 0 <= stats[0, 1] and stats[0, 2] <= 1


def test_mae_full_reconstruction_is_deterministic(graphs):
    _, graph = graphs
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(graph.mae.reconstruct(x), graph.mae.reconstruct(x))
        assert graph.mae.forward_masked(x).shape == x.shape
