"""Built-in embedding architectures: shapes, determinism, preprocessing and weight loading."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest
import torch
from safetensors.torch import save_file
from sift_worker.models import (
    ARCHITECTURES,
    EmbeddingModel,
    WeightsError,
    build_model,
    embed_batch,
    load_weights,
)

# name -> (input_size, embedding_dim, parameter count without the classifier head).
# The counts are torchvision's / timm's, so a layout drift shows up here first.
EXPECTED = {
    "tiny": (64, 128, None),
    "resnet18": (224, 512, 11_176_512),
    "resnet50": (224, 2048, 23_508_032),
    "vit_tiny": (224, 192, 5_524_416),
}


@pytest.fixture(autouse=True)
def _two_threads() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def _images(model: EmbeddingModel, n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    size = model.input_size
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)


def _save(state: dict[str, torch.Tensor], path: pathlib.Path) -> pathlib.Path:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def test_architectures_are_listed() -> None:
    assert ARCHITECTURES == ("tiny", "resnet18", "resnet50", "vit_tiny")


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_output_shape_dtype_and_attributes(name: str) -> None:
    size, dim, n_params = EXPECTED[name]
    model = build_model(name)
    assert isinstance(model, EmbeddingModel)
    assert (model.name, model.input_size, model.embedding_dim) == (name, size, dim)
    assert not model.training
    if n_params is not None:
        assert sum(p.numel() for p in model.parameters()) == n_params
    for n in (1, 2):
        out = embed_batch(model, _images(model, n))
        assert out.shape == (n, dim)
        assert out.dtype == torch.float32
        assert out.device.type == "cpu"
        assert torch.isfinite(out).all()
    # different images give different embeddings
    assert not torch.equal(out[0], out[1])


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_same_seed_is_bit_identical_and_other_seed_differs(name: str) -> None:
    a, b, c = build_model(name, seed=7), build_model(name, seed=7), build_model(name, seed=8)
    x = _images(a, 1)
    out_a, out_b, out_c = embed_batch(a, x), embed_batch(b, x), embed_batch(c, x)
    assert torch.equal(out_a, out_b)
    assert not torch.allclose(out_a, out_c)


def test_build_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model("tiny", seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_unknown_architecture_names_choices() -> None:
    with pytest.raises(ValueError, match="resnet34") as info:
        build_model("resnet34")
    for name in ARCHITECTURES:
        assert name in str(info.value)


def test_torchvision_and_timm_parameter_names() -> None:
    r18 = build_model("resnet18").state_dict()
    for key in (
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_mean",
        "layer4.1.bn2.bias",
    ):
        assert key in r18
    assert r18["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    r50 = build_model("resnet50").state_dict()
    assert r50["layer1.0.conv3.weight"].shape == (256, 64, 1, 1)
    assert r50["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)  # v1.5: stride on the 3x3
    assert "layer4.2.bn3.weight" in r50
    vit = build_model("vit_tiny").state_dict()
    assert vit["patch_embed.proj.weight"].shape == (192, 3, 16, 16)
    assert vit["cls_token"].shape == (1, 1, 192)
    assert vit["pos_embed"].shape == (1, 197, 192)
    assert vit["blocks.11.attn.qkv.weight"].shape == (576, 192)
    assert vit["blocks.0.mlp.fc2.weight"].shape == (192, 768)
    assert "norm.weight" in vit


@pytest.mark.parametrize("name", ["tiny", "vit_tiny"])
def test_embed_batch_equals_manual_normalization(name: str) -> None:
    model = build_model(name)
    images = _images(model, 3)
    mean = torch.tensor(model.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model((images.float() / 255.0 - mean) / std)
    torch.testing.assert_close(embed_batch(model, images), expected, rtol=1e-4, atol=1e-5)


def test_embed_batch_accepts_nhwc_views() -> None:
    """Decoders produce HWC arrays; a permuted view must give the same result as a copy."""
    model = build_model("tiny")
    nhwc = _images(model, 2).permute(0, 2, 3, 1).contiguous()
    view = nhwc.permute(0, 3, 1, 2)
    assert not view.is_contiguous()
    assert torch.equal(embed_batch(model, view), embed_batch(model, view.contiguous()))


def test_embed_batch_result_is_writable_and_input_untouched() -> None:
    model = build_model("tiny")
    images = _images(model, 2)
    before = images.clone()
    out = embed_batch(model, images)
    out /= out.norm(dim=1, keepdim=True)  # must not fail: not an inference tensor
    assert torch.equal(images, before)


def test_embed_batch_validates_input() -> None:
    model = build_model("tiny")
    with pytest.raises(TypeError, match="uint8"):
        embed_batch(model, torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="N, 3"):
        embed_batch(model, torch.zeros(1, 1, 64, 64, dtype=torch.uint8))
    empty = embed_batch(model, torch.zeros(0, 3, 64, 64, dtype=torch.uint8))
    assert empty.shape == (0, 128)
    assert empty.dtype == torch.float32


def test_vit_rejects_wrong_input_size() -> None:
    model = build_model("vit_tiny")
    with pytest.raises(ValueError, match="224x224"):
        embed_batch(model, torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_train_mode_keeps_batchnorm_frozen() -> None:
    model = build_model("tiny")
    images = _images(model, 4)
    before = embed_batch(model, images)
    model.train()
    assert not any(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad():
        model(torch.randn(4, 3, 64, 64) * 5 + 3)  # would shift running stats if not frozen
    model.eval()
    torch.testing.assert_close(embed_batch(model, images), before, rtol=0, atol=0)


# --- weights ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_safetensors_round_trip(name: str, tmp_path: pathlib.Path) -> None:
    source = build_model(name, seed=1)
    path = _save(source.state_dict(), tmp_path / f"{name}.safetensors")
    loaded = build_model(name, seed=2, weights=path)
    assert not loaded.training
    x = _images(source, 1)
    assert torch.equal(embed_batch(loaded, x), embed_batch(source, x))


def test_torchvision_checkpoint_with_classifier_loads(tmp_path: pathlib.Path) -> None:
    source = build_model("resnet18", seed=3)
    state = dict(source.state_dict())
    state["fc.weight"] = torch.randn(1000, 512)
    state["fc.bias"] = torch.randn(1000)
    # some exporters drop BatchNorm's step counters and store half precision
    state = {
        k: (v.half() if v.is_floating_point() else v)
        for k, v in state.items()
        if not k.endswith("num_batches_tracked")
    }
    path = _save(state, tmp_path / "tv.safetensors")
    model = build_model("resnet18", seed=4, weights=path)
    for key, value in model.state_dict().items():
        assert value.dtype == source.state_dict()[key].dtype
    torch.testing.assert_close(
        model.state_dict()["conv1.weight"], source.state_dict()["conv1.weight"].half().float()
    )


def test_timm_vit_checkpoint_with_head_and_module_prefix_loads(tmp_path: pathlib.Path) -> None:
    source = build_model("vit_tiny", seed=3)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["module.head.weight"] = torch.randn(1000, 192)
    state["module.head.bias"] = torch.randn(1000)
    model = build_model("vit_tiny", weights=_save(state, tmp_path / "vit.safetensors"))
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


def test_resnet50_weights_into_resnet18_says_so(tmp_path: pathlib.Path) -> None:
    path = _save(build_model("resnet50").state_dict(), tmp_path / "r50.safetensors")
    with pytest.raises(WeightsError) as info:
        build_model("resnet18", weights=path)
    message = str(info.value)
    assert "looks like resnet50 weights, not resnet18" in message
    assert str(path) in message
    assert "unexpected key(s) in the file: 'layer1.0.bn3.bias'" in message
    assert "'layer1.0.conv1.weight': model expects (64, 64, 3, 3), file has (64, 64, 1, 1)" in (
        message
    )


def test_unsupported_architecture_is_named(tmp_path: pathlib.Path) -> None:
    # resnet34 = BasicBlock with (3, 4, 6, 3) blocks; build it by extending resnet18's layout.
    state = dict(build_model("resnet18").state_dict())
    for layer, blocks in ((1, 3), (2, 4), (3, 6), (4, 3)):
        for block in range(2, blocks):
            for key, value in list(state.items()):
                if key.startswith(f"layer{layer}.1."):
                    state[key.replace(f"layer{layer}.1.", f"layer{layer}.{block}.")] = value.clone()
    path = _save(state, tmp_path / "r34.safetensors")
    with pytest.raises(WeightsError, match="resnet34 is not a built-in architecture"):
        build_model("resnet18", weights=path)


def test_missing_key_is_named(tmp_path: pathlib.Path) -> None:
    state = dict(build_model("resnet18").state_dict())
    del state["layer3.1.bn2.weight"]
    path = _save(state, tmp_path / "partial.safetensors")
    with pytest.raises(WeightsError, match=r"1 key\(s\) missing.*'layer3\.1\.bn2\.weight'") as info:
        build_model("resnet18", weights=path)
    assert str(path) in str(info.value)
    assert "resnet18" in str(info.value)


def test_many_missing_keys_are_counted(tmp_path: pathlib.Path) -> None:
    state = {
        k: v for k, v in build_model("tiny").state_dict().items() if not k.startswith("features.0")
    }
    path = _save(state, tmp_path / "tiny.safetensors")
    # num_batches_tracked is optional, so 5 per stage
    with pytest.raises(WeightsError, match=r"5 key\(s\) missing.*'features.0.bn.running_var'$"):
        build_model("tiny", weights=path)


def test_unexpected_key_is_named(tmp_path: pathlib.Path) -> None:
    state = dict(build_model("tiny").state_dict())
    state["extra.projection.weight"] = torch.zeros(2, 2)
    path = _save(state, tmp_path / "extra.safetensors")
    with pytest.raises(WeightsError, match=r"unexpected.*'extra\.projection\.weight'"):
        build_model("tiny", weights=path)


def test_wrong_shape_names_key_and_shapes(tmp_path: pathlib.Path) -> None:
    state = dict(build_model("vit_tiny").state_dict())
    state["pos_embed"] = torch.zeros(1, 50, 192)
    path = _save(state, tmp_path / "vit.safetensors")
    model = build_model("vit_tiny", seed=9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError, match=r"'pos_embed': model expects \(1, 197, 192\), file has"):
        load_weights(model, path)
    for key, value in model.state_dict().items():  # nothing was half-loaded
        assert torch.equal(value, before[key])


def test_not_a_safetensors_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"definitely not safetensors")
    with pytest.raises(WeightsError, match="not a valid safetensors file") as info:
        build_model("tiny", weights=path)
    assert str(path) in str(info.value)
    assert info.value.__cause__ is None


def test_pickle_checkpoint_gets_conversion_hint(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(build_model("tiny").state_dict(), path)
    with pytest.raises(WeightsError, match=r"pickle checkpoint.*save_file"):
        build_model("tiny", weights=path)


def test_missing_weights_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "nope.safetensors"
    with pytest.raises(WeightsError, match="does not exist") as info:
        build_model("resnet18", weights=path)
    assert str(path) in str(info.value)
    assert "resnet18" in str(info.value)


def test_non_finite_weights_rejected(tmp_path: pathlib.Path) -> None:
    state = dict(build_model("tiny").state_dict())
    state["features.1.conv.weight"] = state["features.1.conv.weight"].clone()
    state["features.1.conv.weight"][0, 0, 0, 0] = float("nan")
    path = _save(state, tmp_path / "nan.safetensors")
    with pytest.raises(WeightsError, match=r"'features\.1\.conv\.weight' contains NaN"):
        build_model("tiny", weights=path)


def test_weights_error_is_a_value_error() -> None:
    assert issubclass(WeightsError, ValueError)
