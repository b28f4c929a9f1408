"""The model suite's CNNs: shapes, sizes, checkpoints and ONNX export (scripts/bench_models.py
builds and times them)."""

import numpy as np
import pytest
import torch

from tvmcomp.model import load_checkpoint, save_checkpoint
from tvmcomp.model.suite import SUITE, seeded

# outputs per model: CIFAR-10 classes, person / no person, 12 keywords, the 640 features again
OUTPUTS = {"resnet8": 10, "mobilenet_v1_025": 2, "ds_cnn": 12, "fc_autoencoder": 640}


@pytest.mark.parametrize("name", sorted(SUITE))
def test_model_output_shapes(name):
    cls = SUITE[name]
    with torch.no_grad():
        y = seeded(cls)(torch.zeros(3, *cls.input_shape[1:]))
    assert y.shape == (3, OUTPUTS[name])


@pytest.mark.parametrize("name", sorted(SUITE))
def test_checkpoint_and_onnx_match_pytorch(name, tmp_path):
    """Seeded batch norms are not identities; the checkpoint loads the same model back, and
    ONNX Runtime on its export computes what PyTorch does."""
    from tvmcomp.frontend.onnx_export import export_onnx
    from tvmcomp.verify import ort_session

    cls = SUITE[name]
    model = seeded(cls)
    bns = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm1d,
                                                       torch.nn.BatchNorm2d))]
    assert bns and all(float(m.running_var.min()) >= 0.5 for m in bns)
    save_checkpoint(model, tmp_path / "m.pt")
    again, _ = load_checkpoint(tmp_path / "m.pt")
    x = np.random.default_rng(0).standard_normal((2, *cls.input_shape[1:])).astype("float32")
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
        np.testing.assert_array_equal(again(torch.from_numpy(x)).numpy(), ref)
    sess = ort_session(str(export_onnx(model, tmp_path / "m.onnx",
                                       input_shape=cls.input_shape)))
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
