"""The shape every detector has: a scoring module and a fitter (the config is in ``config.py``).

- The **module** (:class:`AnomalyModule`) is a plain ``nn.Module`` mapping a batch of images to
  image scores ``(B,)`` and anomaly maps ``(B, H, W)``. Everything fitted (statistics, memory
  bank, network) and everything after the network (normalisation, upsampling, blur, the image
  score) lives in it as buffers or submodules, so exporting the module exports the whole pipeline.
- The **fitter** (:class:`Fitter`) consumes batches of image tensors and builds the module.

Modules and fitters read no files, draw no progress bars and import nothing above ``models``:
the engine feeds them tensors and owns files, thresholds, persistence and progress.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

#: ``accelerate(module, key, input_shape, meta)`` returns a callable equivalent to ``module`` on
#: images of ``input_shape = (height, width)`` (e.g. the same graph in ONNX Runtime, cached under
#: ``key`` with ``meta``, a JSON-ready dict of what it was built from); the engine provides it,
#: models only call it.
Accelerate = Callable[..., Callable[[torch.Tensor], torch.Tensor]]


@dataclass(frozen=True)
class Hooks:
    """What the engine lends a fitter or a restored module.

    Attributes:
        accelerate: runs a feature extractor faster (see :data:`Accelerate`); None: eager PyTorch.
        on_epoch: called after each training epoch with ``(epoch, train_loss, val_loss)``.
        on_stage: called with a short description before each long step (building a backbone).
    """

    accelerate: Accelerate | None = None
    on_epoch: Callable[[int, float, float], None] | None = None
    on_stage: Callable[[str], None] | None = None

    def stage(self, text: str) -> None:
        if self.on_stage is not None:
            self.on_stage(text)


class AnomalyModule(nn.Module, ABC):
    """``images (B, 3, H, W)`` float in 0..1 -> ``(scores (B,), maps (B, H, W))`` float32.

    Higher always means more anomalous. A submodule may be run through a faster runtime with
    :meth:`accelerate` (the feature extractor, in ONNX Runtime); :meth:`run` calls the fast
    version where one is set, and :meth:`plain` is the module without them (for export).
    """

    #: most images one forward pass may take (the engine splits larger batches); None: any
    max_batch: int | None = None

    def __init__(self) -> None:
        super().__init__()
        # Plain attribute, not a registered submodule: the fast callables are not state.
        self.__dict__["_fast"] = {}

    def accelerate(
        self,
        name: str,
        hooks: Hooks,
        key: str,
        input_shape: tuple[int, int],
        meta: dict[str, Any] | None = None,
    ) -> None:
        """Run submodule ``name`` through ``hooks.accelerate`` (cached under ``key``, with
        ``meta`` stored in the cached graph)."""
        if hooks.accelerate is not None:
            self._fast[name] = hooks.accelerate(getattr(self, name), key, input_shape, meta)

    def run(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Submodule ``name`` on ``x``, through its fast version when there is one."""
        fast = self._fast.get(name)
        return fast(x) if fast is not None else getattr(self, name)(x)

    def plain(self) -> AnomalyModule:
        """This module with no fast versions (shares every tensor): what export traces."""
        import copy

        out = copy.copy(self)
        out.__dict__["_fast"] = {}
        return out

    @abstractmethod
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    @abstractmethod
    def fitted_state(self) -> dict[str, torch.Tensor]:
        """What fitting learned, as named tensors (what a model file stores)."""

    def fit_info(self) -> dict[str, Any]:
        """Scalar facts of the fit (counts, sizes, the weights used), JSON-ready."""
        return {}


class Fitter(ABC):
    """Consumes batches of images and builds an :class:`AnomalyModule`.

    ``update`` may be called any number of times; ``finalize`` may be called more than once
    (the engine scores held-out images with a first module, then adds them and finalizes again
    where the detector allows it).
    """

    #: whether the fitter needs a label per image (True = defective)
    supervised: bool = False
    #: whether held-out images, once used for the threshold, may join the final model; False
    #: where adding them would change the model's scores of similar images (a memory bank) or
    #: is expensive (training again)
    merge_holdout: bool = False

    @abstractmethod
    def update(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Add ``images (B, 3, H, W)`` float in 0..1 (and ``labels (B,)`` bool if supervised)."""

    @abstractmethod
    def finalize(self) -> AnomalyModule:
        """The module fitted on everything seen so far."""

    #: whether the fitter keeps the training images' folds apart, so that the engine can score
    #: every training image with a model that did not see it: :meth:`start_fold` before a
    #: fold's first :meth:`update`, :meth:`without_fold` for the model of the other folds
    #: (exact, not retrained), :meth:`fold_bytes` for the memory a fold costs; where a fitter
    #: has ``expect_images(n)``, the engine says first how many images the folds will hold
    out_of_fold: bool = False

    def start_fold(self, fold: int) -> None:
        raise NotImplementedError(f"{type(self).__name__} keeps no folds")

    def without_fold(self, fold: int) -> AnomalyModule:
        raise NotImplementedError(f"{type(self).__name__} keeps no folds")

    def fold_bytes(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} keeps no folds")

    #: whether the training images may be split across shards (processes or machines): each
    #: shard's fitter gets :meth:`update` calls and returns :meth:`partial`, and one fitter
    #: :meth:`combine` s them before :meth:`finalize`
    shardable: bool = False

    def shared_state(self, first_batch: torch.Tensor) -> dict[str, float]:
        """What every shard must share before its first :meth:`update` (handed to each shard's
        :meth:`set_shared_state`), from the images an unsharded fit would see first."""
        raise NotImplementedError(f"{type(self).__name__} cannot be fitted in shards")

    def set_shared_state(self, state: dict[str, float]) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot be fitted in shards")

    def partial(self) -> dict[str, Any]:
        """What this shard learned, as plain values and tensors (sent between processes)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be fitted in shards")

    def combine(self, partials: list[dict[str, Any]]) -> None:
        """Take in the :meth:`partial` s of every shard, in shard order."""
        raise NotImplementedError(f"{type(self).__name__} cannot be fitted in shards")


def image_max(maps: torch.Tensor) -> torch.Tensor:
    """``(B, H, W) -> (B,)``: the maximum of each map."""
    return maps.flatten(1).amax(dim=1)
