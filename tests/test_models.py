"""Reference architectures and self-describing checkpoints."""
import pytest
import torch
from _helpers.models import misaligned_small_cnn

from edgekit.errors import ConfigError, InputFileError
from edgekit.models import count_params, create_model, load_checkpoint, model_names, save_checkpoint


@pytest.mark.parametrize("name,kwargs,shape,params", [
    ("small_cnn", {}, (2, 3, 32, 32), None),
    ("resnet_cifar", {"depth": 20}, (2, 3, 32, 32), 272_474),  # He et al.: 0.27M
    ("resnet_cifar", {"depth": 8, "width": 0.5}, (2, 1, 16, 16), None),
    ("resnet18", {}, (1, 3, 224, 224), 11_689_512),  # torchvision resnet18
    ("mobilenetv2", {}, (1, 3, 224, 224), 3_504_872),  # torchvision mobilenet_v2
    ("rnn_classifier", {"cell": "gru"}, (2, 8, 8), None),
    ("vit", {}, (2, 1, 8, 8), None),
])
def test_zoo_builds_runs_and_matches_published_sizes(name, kwargs, shape, params):
    in_ch = {"in_channels": shape[1]} if len(shape) == 4 else {}
    model = create_model(name, **kwargs, **in_ch).eval()
    out = model(torch.randn(*shape))
    assert out.shape[0] == shape[0]
    if params is not None:
        assert count_params(model) == params


def test_unknown_model_lists_valid_names():
    with pytest.raises(ConfigError, match=r"unknown model 'resnet9'.*valid: .*resnet_cifar"):
        create_model("resnet9")
    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        create_model("resnet_18")


def test_bad_model_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="no argument"):
        create_model("resnet_cifar", depht=20)
    with pytest.raises(ConfigError, match="6n\\+2"):
        create_model("resnet_cifar", depth=10)


def test_checkpoint_roundtrip_rebuilds_without_other_input(tmp_path):
    model = create_model("vit", dim=32, depth=2, heads=2).eval()
    path = save_checkpoint(model, tmp_path / "m.pt", {"input_shape": [1, 8, 8]})
    loaded, meta = load_checkpoint(path)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(model(x), loaded(x))
    assert meta["input_shape"] == [1, 8, 8]
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temp files left


def test_checkpoint_of_resized_layers_rebuilds_at_new_size(tmp_path):
    model = misaligned_small_cnn()  # first conv/bn resized to 5 channels, as structured pruning would
    path = save_checkpoint(model, tmp_path / "p.pt")
    loaded, _ = load_checkpoint(path)
    assert loaded[0][0].out_channels == 5
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(model(x), loaded(x))


def test_checkpoint_from_other_architecture_is_refused(tmp_path):
    a = create_model("resnet_cifar", depth=8)
    path = save_checkpoint(a, tmp_path / "a.pt")
    payload = torch.load(path, weights_only=True)
    payload["arch"] = {"name": "resnet_cifar", "kwargs": {"depth": 14}}
    payload["structure"] = {}
    torch.save(payload, tmp_path / "b.pt")
    with pytest.raises(InputFileError, match="do not fit architecture 'resnet_cifar'.*missing"):
        load_checkpoint(tmp_path / "b.pt")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_bearing_checkpoint_is_refused_never_executed(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": "edgekit-checkpoint/1", "payload": _Evil()}, path)
    with pytest.raises(InputFileError, match="refused to load"):
        load_checkpoint(path)
    assert "pwned" not in capsys.readouterr().out


def test_corrupt_and_foreign_checkpoints(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputFileError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"w": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(InputFileError, match="not an edgekit checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(InputFileError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_registry_lists_required_families():
    names = set(model_names())
    assert {"small_cnn", "resnet_cifar", "resnet18", "mobilenetv2", "rnn_classifier", "vit"} <= names


@pytest.mark.parametrize("name,kwargs,stages,classifier", [
    ("resnet_cifar", {"depth": 8}, ["layer1", "layer2", "layer3"], "fc"),  # layer4 is an Identity here
    ("resnet18", {}, ["layer1", "layer2", "layer3", "layer4"], "fc"),
    ("vit", {"depth": 3}, ["blocks.0", "blocks.1", "blocks.2"], "head"),
    ("small_cnn", {"depth": 2}, ["0", "1"], "4"),
])
def test_architectures_declare_their_feature_stages_and_classifier(name, kwargs, stages, classifier):
    from edgekit.models import model_layout

    model = create_model(name, **kwargs)
    layout = model_layout(model)
    assert layout.feature_stages(model) == stages and layout.classifier_name(model) == classifier
    assert isinstance(model.get_submodule(classifier), torch.nn.Linear)
    assert model_layout(torch.nn.Linear(2, 2)).feature_stages(torch.nn.Linear(2, 2)) == []  # not from the zoo
