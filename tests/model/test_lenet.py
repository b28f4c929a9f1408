"""LeNet-5, its training and its checkpoint format."""

import pytest
import torch

from tvmcomp.errors import ModelError, TvmcompError
from tvmcomp.model import LeNet5, TrainConfig, evaluate_torch, load_checkpoint, save_checkpoint
from tvmcomp.model.lenet import CHECKPOINT_FORMAT

LENET5_PARAMS = 61706  # conv1 156 + conv2 2416 + fc1 48120 + fc2 10164 + fc3 850


def test_forward_shape():
    model = LeNet5().eval()
    with torch.no_grad():
        for n in (1, 3):
            out = model(torch.zeros(n, 1, 28, 28))
            assert out.shape == (n, 10) and out.dtype == torch.float32


def test_param_count():
    assert sum(p.numel() for p in LeNet5().parameters()) == LENET5_PARAMS


def test_trained_fixture_learns(lenet, eval_set):
    # one epoch on 5k images; chance is 10 %
    assert evaluate_torch(lenet.model, eval_set) > 0.7


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    model = LeNet5()
    path = tmp_path / "sub" / "m.pt"
    save_checkpoint(model, path, {"epochs": 3, "note": "x"})
    loaded, meta = load_checkpoint(path)
    assert meta == {"epochs": 3, "note": "x"}
    assert isinstance(loaded, LeNet5) and not loaded.training
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))
    assert not path.with_name("m.pt.tmp").exists()


def test_fixture_checkpoint_loads(lenet):
    loaded, meta = load_checkpoint(lenet.checkpoint)
    assert meta == {"note": "test fixture"}
    for k, v in lenet.model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


def test_missing_checkpoint(tmp_path):
    with pytest.raises(ModelError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize("corrupt", ["random", "truncated", "empty"])
def test_corrupt_checkpoint(tmp_path, corrupt):
    good = tmp_path / "good.pt"
    save_checkpoint(LeNet5(), good)
    raw = good.read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes({"random": bytes(range(256)) * 64, "truncated": raw[: len(raw) // 2],
                     "empty": b""}[corrupt])
    with pytest.raises(ModelError, match="not a readable checkpoint"):
        load_checkpoint(bad)


def test_checkpoint_with_code_is_refused(tmp_path):
    """weights_only=True: a pickle that would run code is not loaded."""
    path = tmp_path / "evil.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "arch": "lenet5", "obj": TrainConfig()}, path)
    with pytest.raises(ModelError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_not_a_tvmcomp_checkpoint(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(LeNet5().state_dict(), path)
    with pytest.raises(ModelError, match="not a tvmcomp checkpoint"):
        load_checkpoint(path)


def test_unknown_architecture(tmp_path):
    path = tmp_path / "a.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "arch": "resnet50", "state_dict": {}}, path)
    with pytest.raises(ModelError, match="unknown architecture 'resnet50'"):
        load_checkpoint(path)


def test_weights_that_do_not_fit(tmp_path):
    sd = LeNet5().state_dict()
    sd["fc3.weight"] = torch.zeros(5, 84)
    path = tmp_path / "w.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "arch": "lenet5", "state_dict": sd}, path)
    with pytest.raises(ModelError, match="weights do not fit lenet5"):
        load_checkpoint(path)


def test_save_unknown_model_type(tmp_path):
    with pytest.raises(ModelError, match="Linear"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "x.pt")


def test_invalid_train_config():
    with pytest.raises(TvmcompError, match="invalid training config"):
        TrainConfig(epochs=0)
    with pytest.raises(TvmcompError):
        TrainConfig(lr=0)


@pytest.mark.parametrize("ckpt, expect", [
    ({"arch": "lenet5"}, "'state_dict' must map parameter names to tensors"),
    ({"arch": "lenet5", "state_dict": [1, 2]}, "'state_dict' must map parameter names"),
    ({"arch": "lenet5", "state_dict": {"conv1.weight": "x"}}, "to tensors"),
    ({"arch": "lenet5", "state_dict": None, "meta": {}}, "'state_dict' must map"),
    ({"arch": "lenet5", "state_dict": LeNet5().state_dict(), "meta": [1]},
     "'meta' must be a mapping, got list"),
])
def test_malformed_checkpoint_structure(tmp_path, ckpt, expect):
    """A checkpoint of the right format with a wrong structure is one ModelError line."""
    path = tmp_path / "bad.pt"
    torch.save({"format": CHECKPOINT_FORMAT, **ckpt}, path)
    with pytest.raises(ModelError, match=expect):
        load_checkpoint(path)
