"""The Python API's estimators: files -> batches -> a detector's fitter and module -> results.

One class per registered detector (``defectscope.PaDiM``, ``defectscope.Autoencoder``, ...) is
generated from the registry. Its keyword-only constructor takes every option of the detector's
config and of :class:`~defectscope.engine.rules.settings.EngineOptions`, stores them unchanged and
validates them in ``fit`` (scikit-learn's estimator contract: ``get_params``, ``set_params``
and ``sklearn.base.clone`` work).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from defectscope.config import Options
from defectscope.data.images import source_bit_depth
from defectscope.data.loader import ImageInput, iter_batches
from defectscope.data.mvtec import Category, load_category
from defectscope.engine.fitting.options import split_params
from defectscope.engine.fitting.sharding import Executor, ShardJob, ShardResult
from defectscope.engine.rules.operating import (
    FEW_GOOD,
    check_fit_info,
    check_threshold_source,
    checked_threshold,
    choose,
)
from defectscope.engine.rules.record import FitInfo, used_precision
from defectscope.engine.rules.settings import ENGINE_NAMES, EngineOptions
from defectscope.engine.runtimes.precision import AGREEMENT_IMAGES, INT8_TENSOR, PrecisionChoice
from defectscope.engine.scoring.scorer import Scorer
from defectscope.engine.scoring.shortcuts import IntensitySummary, batch_stats, image_formats
from defectscope.errors import (
    ConfigError,
    DataError,
    DefectscopeError,
    ModelFileError,
    NotFittedError,
)
from defectscope.models import DETECTORS, DetectorInfo
from defectscope.models.lean import remembered_features
from defectscope.progress import progress_bar
from defectscope.version import __version__

log = logging.getLogger(__name__)


def training_paths(data: str | Path | Category | Sequence[str | Path]) -> list[Path]:
    """The defect-free training images of a category folder, a Category or a list of files."""
    if isinstance(data, Category):
        return list(data.train_paths)
    if isinstance(data, (str, Path)):
        return list(load_category(data).train_paths)
    paths = [Path(p) for p in data]
    if not paths:
        raise DataError("fit got an empty list of images; pass defect-free training images")
    return paths


def fixed_scales(
    scores: np.ndarray,
    maps: np.ndarray,
    threshold: float,
    map_scores: np.ndarray | None = None,
) -> dict[str, Any]:
    """The scales fixed at fit time from the held-out defect-free images, saved with the model.

    ``score_scale``: the normalised score is a logistic curve through 0.5 at the threshold, 0.1
    at ``threshold - spread`` and 0.9 at ``threshold + spread``, with ``spread`` the larger of
    (threshold - median held-out score) and 1.4826 x their median absolute deviation: a typical
    good part scores about 0.1 at the threshold chosen at fit time. ``colour_scale``: heatmaps
    run from the median held-out pixel score (blue) to twice the distance to the highest
    held-out pixel score (red), so the hottest spot of a typical good part is mid-scale; every
    figure, overlay and page uses the same colours for the same score. ``maps`` may be a sample
    of the images: ``map_scores`` are then the scores of the sampled ones (default ``scores``).
    """
    flat = maps.reshape(len(maps), -1)
    low = float(np.median(flat))
    high = float(np.quantile(flat.max(axis=1), 0.99))
    top = low + 2 * max(high - low, 1e-6)
    paired = scores if map_scores is None else map_scores
    on_map = bool(np.allclose(paired, flat.max(axis=1), rtol=1e-4, atol=1e-6))
    return {
        "score_scale": score_scale(scores, threshold),
        "colour_scale": [low, top],
        "threshold_on_map": on_map,
    }


def score_scale(scores: np.ndarray, threshold: float) -> dict[str, float]:
    """``{"good_median", "spread"}`` of the normalised score (see :func:`fixed_scales`) from
    held-out good ``scores`` and the threshold."""
    median = float(np.median(scores))
    mad = 1.4826 * float(np.median(np.abs(scores - median)))
    spread = max(float(threshold - median), mad)
    if not np.isfinite(spread) or spread <= 0:
        spread = max(abs(median) * 0.1, 1e-6)
    return {"good_median": median, "spread": spread}


def to_tensor(batch: np.ndarray):
    """``(B, H, W, 3)`` uint8 -> ``(B, 3, H, W)`` float32 in 0..1."""
    import torch

    return torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def _torch_scores(module, batch: np.ndarray, step: int):
    """``(scores, maps)`` numpy pairs of a PyTorch module, ``step`` images per forward pass."""
    import torch

    for start in range(0, len(batch), step):
        with torch.inference_mode():
            scores, maps = module(to_tensor(batch[start : start + step]))
        yield scores.float().numpy(), maps.float().numpy()


def _lean_scores(module, batch: np.ndarray, step: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The same for a lean (numpy) module, which takes the uint8 images: its passes run side by
    side, one per core (:func:`~defectscope.engine.runtimes.parallel.map_pieces`)."""
    from defectscope.engine.runtimes.parallel import map_pieces

    return map_pieces(module, [batch[start : start + step] for start in range(0, len(batch), step)])


def module_scores(module, batch: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, maps)`` float32 of a fitted or fold module (PyTorch or lean) on a uint8
    ``batch``, in passes of its ``max_batch`` (else ``batch_size``) images."""
    step = module.max_batch or batch_size
    score = _lean_scores if getattr(module, "lean", False) else _torch_scores
    parts = list(score(module, batch, step))
    scores = np.concatenate([p[0] for p in parts]).astype(np.float32, copy=False)
    maps = np.concatenate([p[1] for p in parts]).astype(np.float32, copy=False)
    return scores, maps


def relit(batch: np.ndarray, first: int = 0) -> np.ndarray:
    """uint8 ``batch (N, H, W, C)`` with image ``i`` scaled by ``LIGHTING_GAINS[(first + i) %
    len(LIGHTING_GAINS)]``, clipped to 0..255: the same parts under a dimmer or brighter
    light."""
    gains = np.asarray(LIGHTING_GAINS, dtype=np.float32)
    factor = gains[(first + np.arange(len(batch))) % len(gains)].reshape(-1, 1, 1, 1)
    return np.clip(batch.astype(np.float32) * factor + 0.5, 0, 255).astype(np.uint8)


def holdout_split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """``(held, rest)`` indices: a seeded ``fraction`` of ``n`` (1 to 32, leaving at least 2)."""
    if fraction <= 0:
        return [], list(range(n))
    order = np.random.default_rng(seed).permutation(n)
    k = min(EngineOptions.max_holdout, n - 2, max(1, round(fraction * n)))
    return sorted(order[:k].tolist()), sorted(order[k:].tolist())


def fold_split(n: int, folds: int) -> list[list[int]]:
    """``folds`` contiguous runs of ``range(n)`` whose sizes differ by at most one.

    Contiguous in the files' order, not shuffled: images taken one after another (often alike)
    are held out together, so an out-of-fold score is closer to that of a later batch of parts
    than a random split would make it; and the first batch a fit sees (its gain target) is the
    same as without folds.
    """
    k = max(1, min(folds, n))
    bounds = [round(i * n / k) for i in range(k + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(k)]


#: training images scored out of fold at most (evenly spread over the files)
MAX_OUT_OF_FOLD = 500
#: synthetic defects per training image at most (few images: several defects from each)
SYNTHETIC_PER_IMAGE = 8
#: out-of-fold maps kept to fix the colour scale (their scores set the score scale with all)
MAX_SAMPLE_MAPS = 64
#: synthetic examples kept (with their maps) for the report's grid
MAX_EXAMPLES = 12
#: brightness factors of the lighting probe, taken in turn image by image (a change of light
#: between the training day and a later one of this order is common on a line)
LIGHTING_GAINS = (0.9, 1.1)
#: the folds' statistics may take this much memory together (PaDiM keeps one Gaussian per fold)
FOLD_MEMORY = 1 << 30


class Detector(Scorer):
    """Base of the generated estimator classes; see the module docstring."""

    #: the registry entry of the detector this class runs
    info: ClassVar[DetectorInfo]
    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fields = [*dataclasses.fields(cls.info.config), *dataclasses.fields(EngineOptions)]
        names = [f.name for f in fields]
        clash = {n for n in names if names.count(n) > 1}
        if clash:
            raise TypeError(
                f"{cls.info.name}: options {clash} are both detector and engine options"
            )
        signature = inspect.Signature(
            [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
            + [
                inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default)
                for f in fields
            ]
        )
        defaults = {f.name: f.default for f in fields}

        def __init__(self, **params: Any) -> None:  # noqa: N807 - the generated constructor
            unknown = sorted(set(params) - set(defaults))
            if unknown:
                raise TypeError(
                    f"{cls.__name__}() got an unexpected keyword argument {unknown[0]!r}"
                )
            for key, default in defaults.items():
                setattr(self, key, params.get(key, default))

        __init__.__signature__ = signature  # type: ignore[attr-defined]
        __init__.__doc__ = f"Every option of {cls.info.name} and of the engine, keyword-only."
        __init__.__qualname__ = f"{cls.__name__}.__init__"
        cls.__init__ = __init__  # type: ignore[misc]

    # -- scikit-learn's estimator contract ------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        return [*cls.info.config.names(), *ENGINE_NAMES]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Constructor arguments as stored (``deep`` is accepted for scikit-learn; no nesting)."""
        return {n: getattr(self, n) for n in self._param_names()}

    def set_params(self, **params: Any) -> Detector:
        """Change constructor arguments; they take effect at the next ``fit``."""
        for key, value in params.items():
            if key not in self._param_names():
                raise ConfigError(
                    f"{type(self).__name__} has no option {key!r}; options: "
                    + ", ".join(self._param_names())
                )
            setattr(self, key, value)
        return self

    def options(self) -> tuple[Options, EngineOptions]:
        """The validated ``(detector config, engine options)`` of the current parameters."""
        return split_params(self.name, self.get_params())

    def __repr__(self) -> str:
        changed = {
            k: v
            for k, v in self.get_params().items()
            if v != inspect.signature(type(self).__init__).parameters[k].default
        }
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    # -- fitting --------------------------------------------------------------------------------
    def fit(
        self,
        data: str | Path | Category | Sequence[str | Path],
        labels: Sequence[bool] | None = None,
        *,
        shards: int = 1,
        executor: Executor | None = None,
        lighting_probe: bool = False,
    ) -> Detector:
        """Learn from images; returns ``self``.

        Args:
            data: a category folder (its ``train/good``), a :class:`Category`, or image files.
            labels: one bool per image (True = defective), for supervised detectors only.
            shards: split the training images into this many shards, fitted by ``executor``
                and merged (PaDiM: the same model within float rounding; PatchCore: a coreset
                of the shards' coresets). Detectors that cannot be sharded refuse ``shards > 1``.
            executor: runs the shards (:mod:`defectscope.engine.fitting.sharding`); default: here,
                one after the other. ``defectscope.cluster.RayExecutor`` runs them on a Ray cluster.
            lighting_probe: also score each out-of-fold image with its brightness scaled by
                :data:`LIGHTING_GAINS` (by the model of the other folds), kept in
                ``lighting_scores_``: how far a change of light alone moves a good part's score
                (:mod:`defectscope.auto` ranks configurations with it). Costs one more
                scoring pass over the out-of-fold images; the model and threshold are the same.
        """
        config, engine = self.options()
        paths = self._check_training_data(data, labels)
        if shards < 1:
            raise ConfigError(f"shards must be at least 1, got {shards}")
        if shards > 1 and not self.info.shardable:
            raise ConfigError(
                f"{self.name} cannot be fitted in shards; "
                + ", ".join(n for n, i in DETECTORS.items() if i.shardable)
                + " can"
            )
        fitter = self._make_fitter(config, engine, shards)
        self._precision: PrecisionChoice | None = None  # set where the precision may change
        # the training images' bit depth, decided once: every image of this source (at fit and
        # later) is scaled by it, never by its own maximum
        self._source_bits = source_bit_depth(paths)
        scales: dict[str, Any] = {}
        source: dict[str, Any] = {"rule": "probability 0.5 of the classifier"}
        self._intensity: list[tuple[np.ndarray, np.ndarray]] = []
        if self.info.supervised:
            y = np.asarray(labels, dtype=bool)
            self._feed(fitter, paths, engine, config.input_shape, y)
            with self._epochs(engine):
                module = fitter.finalize()
            threshold = 0.5  # a probability
        elif fitter.out_of_fold and shards == 1:
            # each image's out-of-fold score reads the features its fold was fed with
            with remembered_features(getattr(fitter, "embedding", None)):
                module, threshold, scales, source = self._fit_out_of_fold(
                    fitter, paths, config, engine, lighting_probe
                )
        else:
            module, threshold, scales, source = self._fit_holdout(
                fitter, paths, config, engine, shards, executor
            )
        if self._precision is None:  # a fit without folds scores in fp32 (and says why)
            self._precision = PrecisionChoice(engine.precision, None, 0.0)
            self._precision.prepare(np.empty(0))
        means, stds = (np.concatenate(parts) for parts in zip(*self._intensity))
        del self._intensity
        info = {
            **scales,
            "threshold_source": {
                **source,
                "threshold": float(threshold),
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
            "shards": shards,
            "intensity": IntensitySummary.of(means, stds).to_dict(),
            "formats": image_formats(paths),
            "bit_depth": self._source_bits,
            "precision": self._precision.record(),
        }
        del self._precision
        self._end_stage()
        self._set_fitted(module, threshold, config, engine, info)
        return self

    def _fit_out_of_fold(
        self, fitter, paths: list[Path], config, engine: EngineOptions, lighting: bool = False
    ):
        """Every training image in one of ``threshold_folds`` folds; each is scored (and
        synthetic defects made from it are scored) by the model of the other folds, the
        threshold comes from those scores (:mod:`defectscope.engine.rules.operating`), and the final
        model keeps every image. Returns ``(module, threshold, scales, source)``."""
        from defectscope.data.anomalies import check_size, make_defects

        n = len(paths)
        folds = fold_split(n, self._fold_count(fitter, engine, n))
        # the gain target from the first images, as an unsharded fit without folds takes it
        first_paths = paths[: engine.batch_size]
        _, first = next(iter_batches(first_paths, config.input_shape, n, 0, self._source_bits))
        fitter.shared_state(first if getattr(fitter, "lean", False) else to_tensor(first))
        expect = getattr(fitter, "expect_images", None)  # the lean fitters are not Fitters
        if expect is not None:
            expect(n)
        for k, members in enumerate(folds):
            fitter.start_fold(k)
            desc = f"fitting fold {k + 1}/{len(folds)}"
            self._feed(fitter, [paths[i] for i in members], engine, config.input_shape, desc=desc)
        # the statistics are fp32's; every image is scored from here on in the precision chosen
        precision = self._precision = PrecisionChoice(
            engine.precision, getattr(fitter, "embedding", None), getattr(fitter, "target", 0.0)
        )
        precision.prepare(first)
        # at most MAX_OUT_OF_FOLD images are scored out of fold, spread evenly over the files:
        # scoring costs a search of the bank per image, so scoring all would make a fit's time
        # grow with the square of the training set
        scored = np.zeros(n, dtype=bool)
        scored[np.linspace(0, n - 1, min(n, MAX_OUT_OF_FOLD)).round().astype(int)] = True
        n_scored = int(scored.sum())
        n_synthetic = min(engine.synthetic, SYNTHETIC_PER_IMAGE * n_scored)
        if n_synthetic:
            try:
                check_size(config.input_shape)
            except ValueError as exc:
                raise ConfigError(
                    f"synthetic={engine.synthetic}: {exc}; or set synthetic=0"
                ) from None
        good = np.empty(n, dtype=np.float32)
        good[:] = np.nan
        syn_scores: list[np.ndarray] = []
        sample_scores: list[np.ndarray] = []
        sample_maps: list[np.ndarray] = []
        examples: list[tuple] = []
        lit: list[np.ndarray] = []
        done = 0
        for k, members in enumerate(folds):
            members = [i for i in members if scored[i]]
            if not members:
                continue
            module = fitter.without_fold(k)
            step = module.max_batch or engine.batch_size
            score = _lean_scores if getattr(module, "lean", False) else _torch_scores
            self._end_stage()
            desc = f"out-of-fold {k + 1}/{len(folds)}"
            fold_paths = [paths[i] for i in members]
            if precision.pending:  # fp32 and the lower precisions on this fold's first images
                sample = fold_paths[:AGREEMENT_IMAGES]
                precision.decide(
                    functools.partial(self._scores_of, module, sample, engine, config.input_shape)
                )
            for idx, batch, scores, maps in self._run(
                module, fold_paths, engine, config.input_shape, desc
            ):
                good[[members[i] for i in idx]] = scores
                if lighting:
                    shifted = relit(batch, done)
                    lit.append(np.concatenate([p[0] for p in score(module, shifted, step)]))
                room = MAX_SAMPLE_MAPS - sum(len(m) for m in sample_maps)
                if room > 0:
                    sample_scores.append(scores[:room])
                    sample_maps.append(maps[:room])
                del maps
                count = (done + len(idx)) * n_synthetic // n_scored - done * n_synthetic // n_scored
                done += len(idx)
                if not count:
                    continue
                defects, masks, _, kinds = make_defects(batch, count, seed=config.seed + done)
                parts = list(score(module, defects, step))
                d_scores = np.concatenate([p[0] for p in parts]).astype(np.float32)
                syn_scores.append(d_scores)
                if len(examples) < MAX_EXAMPLES:
                    d_maps = np.concatenate([p[1] for p in parts]).astype(np.float32)
                    for j in range(min(count, MAX_EXAMPLES - len(examples))):
                        examples.append((defects[j], masks[j], d_maps[j], kinds[j], d_scores[j]))
            del module
        synthetic = np.concatenate(syn_scores) if syn_scores else None
        point = choose(
            good[scored],
            synthetic,
            rule=engine.threshold_rule,
            quantile=engine.threshold_quantile,
            max_false_reject=engine.max_false_reject,
        )
        if n < FEW_GOOD:
            log.warning(
                "only %d training images: the threshold rests on %d out-of-fold scores; %s",
                n,
                n,
                point.summary(),
            )
        self.synthetic_examples_ = examples
        #: one score per training image (NaN where more than MAX_OUT_OF_FOLD were not scored)
        self.out_of_fold_scores_ = good
        self.synthetic_scores_ = synthetic
        #: scores of the out-of-fold images under changed light (``fit(lighting_probe=True)``)
        self.lighting_scores_ = np.concatenate(lit).astype(np.float32) if lit else None
        scales = fixed_scales(
            good[scored],
            np.concatenate(sample_maps),
            point.threshold,
            np.concatenate(sample_scores),
        )
        source = {
            "rule": point.description,
            "n_out_of_fold": n_scored,
            "folds": len(folds),
            "operating_point": point.to_dict(),
            # kept so that `update` can choose the threshold again with more good images
            "scores": {
                "good": [float(x) for x in good[scored]],
                "synthetic": None if synthetic is None else [float(x) for x in synthetic],
            },
        }
        self._end_stage()
        return fitter.finalize(), point.threshold, scales, source

    def _fold_count(self, fitter, engine: EngineOptions, n: int) -> int:
        """``engine.threshold_folds`` (at most one per image), fewer where the folds'
        statistics would not fit in :data:`FOLD_MEMORY` (never fewer than 2)."""
        k = min(engine.threshold_folds, n)
        cost = fitter.fold_bytes()
        if cost and k * cost > FOLD_MEMORY:
            fewer = max(2, FOLD_MEMORY // cost)
            if fewer < k:
                log.info(
                    "%d folds instead of %d: each fold's statistics take %d MB",
                    fewer,
                    k,
                    cost >> 20,
                )
                k = fewer
        return k

    def _fit_holdout(self, fitter, paths, config, engine: EngineOptions, shards: int, executor):
        """For fitters without folds (and sharded fits): a held-out slice of the training images
        sets the threshold, then joins the model where the fitter allows it."""
        held, rest = holdout_split(len(paths), engine.holdout, config.seed)
        if shards > 1:
            # the shared gain target comes from the first images, as in an unsharded fit
            first = paths[: engine.batch_size]
            self._feed_shards(fitter, [paths[i] for i in rest], shards, executor, first)
        else:
            self._feed(fitter, [paths[i] for i in rest], engine, config.input_shape)
        with self._epochs(engine):
            module = fitter.finalize()
        held_paths = [paths[i] for i in held]
        self._end_stage()
        runs = list(self._run(module, held_paths, engine, config.input_shape))
        scores = np.concatenate([s for _, _, s, _ in runs])
        maps = np.concatenate([m for _, _, _, m in runs])
        self._intensity += [batch_stats(batch) for _, batch, _, _ in runs]
        del runs
        if not np.isfinite(scores).all():
            raise ConfigError(
                "the held-out training images score as infinite or NaN: the model's options "
                "(regularization, sigma) make every score meaningless"
            )
        threshold = float(np.quantile(scores, engine.threshold_quantile))
        scales = fixed_scales(scores, maps, threshold)
        del maps
        if fitter.merge_holdout:
            # The held-out images join the final model: it uses every image. Their
            # intensity statistics were recorded when they were scored above.
            self._feed(fitter, held_paths, engine, config.input_shape, record=False)
            module = fitter.finalize()
        source = {
            "rule": f"quantile {engine.threshold_quantile} of {len(held)} held-out training images",
            "n_holdout": len(held),
        }
        return module, threshold, scales, source

    def _make_fitter(self, config, engine: EngineOptions, shards: int):
        """The lean (torch-free, :mod:`defectscope.engine.runtimes.lean`) fitter where it can run,
        else the detector's PyTorch fitter. Where the lean path could run but its graph is not
        cached yet, building the PyTorch fitter exports the graph and the fit goes on lean: every
        run of one config then computes the same numbers."""
        if shards > 1 or self.info.supervised:
            return self.info.load().make_fitter(config, self._hooks(engine))
        from defectscope.engine.runtimes.lean import lean_fitter, lean_key

        fitter = lean_fitter(self.name, config, engine, self._start_stages(engine))
        if fitter is not None:
            return fitter
        built = self.info.load().make_fitter(config, self._hooks(engine))
        if lean_key(self.name, config, engine) is None:
            return built
        return lean_fitter(self.name, config, engine, self._start_stages(engine)) or built

    def _check_training_data(self, data, labels) -> list[Path]:
        if self.info.supervised:
            if labels is None or isinstance(data, (str, Path, Category)):
                raise DataError(
                    f"the {self.name} is supervised: call fit(images, labels) with labelled good "
                    "and defective images (a category's train/good holds no defects)"
                )
            paths = [Path(p) for p in data]
            y = np.asarray(labels, dtype=bool)
            if len(y) != len(paths) or y.all() or not y.any():
                raise DataError(
                    f"{self.name} needs one label per image and both classes; got {len(paths)} "
                    f"images, {int(y.sum())} defective, {int((~y).sum())} good"
                )
            return paths
        if labels is not None:
            raise DataError(f"{self.name} learns from defect-free images only; pass no labels")
        paths = training_paths(data)
        if len(paths) < 3:
            raise DataError(f"fit needs at least 3 defect-free training images, got {len(paths)}")
        return paths

    def _start_stages(self, engine: EngineOptions):
        """A fresh stage line for this call (with its progress option); returns its ``start``."""
        from defectscope.progress import Stages

        self._end_stage()
        self._stages = Stages(engine.progress)
        return self._stages.start

    def _hooks(self, engine: EngineOptions):
        from defectscope.engine.runtimes.runtime import accelerator
        from defectscope.models.base import Hooks

        self._epoch_bar = None

        def on_epoch(epoch: int, train: float, val: float) -> None:
            if self._epoch_bar is not None:
                self._epoch_bar.set_postfix(train=f"{train:.4f}", val=f"{val:.4f}")
                self._epoch_bar.update(1)

        on_stage = self._start_stages(engine)
        return Hooks(accelerator(engine.runtime, on_stage), on_epoch, on_stage)

    def _end_stage(self) -> None:
        stages = getattr(self, "_stages", None)
        if stages is not None:
            stages.finish()

    @contextmanager
    def _epochs(self, engine: EngineOptions) -> Iterator[None]:
        epochs = getattr(self, "epochs", None)
        if epochs is None:
            yield
            return
        self._end_stage()
        with progress_bar(epochs, "training", enabled=engine.progress, unit="epoch") as bar:
            self._epoch_bar = bar
            try:
                yield
            finally:
                self._epoch_bar = None

    def _feed(
        self,
        fitter,
        paths,
        engine,
        size,
        labels: np.ndarray | None = None,
        record: bool = True,
        desc: str = "fitting",
    ) -> None:
        """Feed ``paths`` to ``fitter`` batch by batch; with ``record``, keep their intensity
        statistics for the shift check. Lean fitters take the uint8 batches as they are."""
        lean = getattr(fitter, "lean", False)
        bits = self._source_bits
        batches = iter_batches(paths, size, engine.batch_size, engine.num_workers, bits)
        self._end_stage()
        with progress_bar(len(paths), desc, enabled=engine.progress) as bar:
            for idx, batch in batches:
                y = None
                if labels is not None:
                    import torch

                    y = torch.from_numpy(labels[idx.start : idx.stop])
                fitter.update(batch if lean else to_tensor(batch), y)
                if record:
                    self._intensity.append(batch_stats(batch))
                bar.update(len(idx))

    def _feed_shards(self, fitter, paths: list[Path], shards: int, executor, first) -> None:
        """Fit ``paths`` in shards through ``executor`` and combine them into ``fitter``;
        ``first``: the images whose mean sets the shared gain target."""
        from defectscope.engine.fitting.sharding import SerialExecutor, split_evenly

        config, engine = self.options()
        # Every shard shares what a serial fit takes from its first batch (the illumination
        # target): the same images, so the same value.
        first = next(iter_batches(first, config.input_shape, len(first), 0, self._source_bits))
        shared = {**fitter.shared_state(to_tensor(first[1])), "bit_depth": self._source_bits}
        params = {**self.get_params(), "progress": False}
        parts = split_evenly([str(p) for p in paths], shards)
        jobs = [ShardJob(self.name, params, list(part), shared) for part in parts]
        self._end_stage()
        log.info("fitting %d images in %d shards", len(paths), len(jobs))
        results = list((executor or SerialExecutor()).map(fit_shard, jobs))
        self._intensity += [stat for result in results for stat in result.intensity]
        fitter.combine([result.partial for result in results])

    def fit_shard(self, paths: Sequence[str | Path], shared: dict[str, float]):
        """One shard of a sharded fit (see :func:`fit_shard`)."""

        config, engine = self.options()
        fitter = self.info.load().make_fitter(config, self._hooks(engine))
        fitter.set_shared_state(shared)
        self._source_bits = shared.get("bit_depth")
        self._intensity = []
        self._feed(fitter, [Path(p) for p in paths], engine, config.input_shape)
        self._end_stage()
        intensity, self._intensity = self._intensity, []
        return ShardResult(fitter.partial(), intensity)

    def _run(self, module, items, engine, size, desc: str = "scoring"):
        bits = getattr(self, "_source_bits", None) or self.bit_depth
        batches = iter_batches(items, size, engine.batch_size, engine.num_workers, bits)
        with progress_bar(len(items), desc, enabled=engine.progress) as bar:
            for idx, batch in batches:
                scores, maps = module_scores(module, batch, engine.batch_size)
                bar.update(len(idx))
                yield idx, batch, scores, maps

    def score_batch(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(scores (B,), maps (B, H, W))`` float32 of decoded uint8 images ``(B, H, W, 3)``
        at :attr:`input_shape` (what an ensemble asks of each member)."""
        self.check_fitted()
        return module_scores(self.module_, batch, self.options()[1].batch_size)

    def torch_module(self):
        """The fitted model as a PyTorch module, float images ``(B, 3, H, W)`` in 0..1 ->
        ``(scores, maps)``, whichever runtime scores it (what export traces)."""
        self.check_fitted()
        if getattr(self.module_, "lean", False):  # fitted or loaded without PyTorch
            from defectscope.engine.runtimes.lean import torch_module

            return torch_module(self)
        return self.module_.plain().eval()

    def _scores_of(self, module, items, engine, size) -> np.ndarray:
        """The image scores of ``items`` under ``module`` (no maps kept)."""
        return np.concatenate(
            [scores for _, _, scores, _ in self._run(module, items, engine, size)]
        )

    def _set_fitted(self, module, threshold, config, engine, info: dict[str, Any]) -> None:
        self._source_bits = None  # from now on the fit info's bit_depth
        self.module_ = module
        self.threshold_ = float(threshold)
        self.config_ = config
        self.fit_info_ = FitInfo.from_dict(module.fit_info(), info)

    def record_auto(self, record: dict[str, Any]) -> None:
        """Keep what ``fit --auto`` tried and why it chose this model (``fit_info_.auto``);
        ConfigError unless the record has the shape the report and ``/model`` print."""
        self.check_fitted()
        self.fit_info_ = self.fit_info_.replace(auto=record)

    # -- inference ------------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, int]:  # type: ignore[override]
        """``(height, width)`` the fitted model takes."""
        self.check_fitted()
        return self.config_.input_shape

    def check_fitted(self) -> None:
        """Raise :class:`NotFittedError` unless ``fit`` (or ``load``) has run."""
        if getattr(self, "module_", None) is None:
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit first "
                "(or defectscope.load a saved model)"
            )

    def _score_batches(self, images: list[ImageInput], desc: str):
        self.check_fitted()
        self._end_stage()
        _, engine = self.options()
        return self._run(self.module_, images, engine, self.config_.input_shape, desc)

    # -- learning from the line -----------------------------------------------------------------
    def update(self, images, *, defective=()) -> dict[str, Any]:
        """Fold more good images into this fitted model, without a refit: PaDiM merges their
        statistics, PatchCore appends a coreset of their patches (the detector's
        ``lean_update``). The threshold is chosen again by the fit's rule from the fit's
        out-of-fold scores and the new images' scores under the model before the update (they
        are out-of-sample for it, as out-of-fold scores are). ``defective``: parts that escaped,
        recorded (by SHA-256) for ``calibrate``. Returns what changed; the lineage is appended
        to ``fit_info_.lineage``.

        Raises:
            ConfigError: the detector, or this model's configuration, cannot be updated.
        """
        from defectscope.digest import file_sha256

        self.check_fitted()
        config, engine = self.options()
        path = self.info.load_lean()
        if path is None or not hasattr(path, "lean_update") or not getattr(self.module_, "lean", 0):
            raise ConfigError(
                f"this {self.name} model cannot take new images without a refit (update needs "
                "PaDiM or PatchCore on the torch-free path: runtime onnxruntime, illumination "
                "none, gain or standardize); fit it again on all the images"
            )
        paths = training_paths(images)
        escapes = training_paths(defective) if defective else []
        scores: list[np.ndarray] = []
        step = self.module_.max_batch or engine.batch_size

        def batches() -> Iterator[np.ndarray]:
            """Each image decoded once: scored by the model as it was (out-of-sample scores
            for the threshold), then handed to the update."""
            for _, batch in iter_batches(
                paths, config.input_shape, engine.batch_size, engine.num_workers, self.bit_depth
            ):
                scores.extend(part[0] for part in _lean_scores(self.module_, batch, step))
                yield batch

        self._start_stages(engine)(f"folding {len(paths)} images into the model")
        module = path.lean_update(config, self.module_, batches())
        self._end_stage()
        before = np.concatenate(scores).astype(np.float64) if scores else np.empty(0)
        info = {**self.fit_info_.to_dict(), **module.fit_info()}
        source = dict(info.get("threshold_source") or {})
        old_threshold = float(self.threshold_)
        threshold = old_threshold
        kept = source.get("scores")
        if isinstance(kept, dict) and kept.get("good") is not None:
            good = np.concatenate([np.asarray(kept["good"], dtype=np.float64), before])
            synthetic = kept.get("synthetic")
            point = choose(
                good,
                None if synthetic is None else np.asarray(synthetic, dtype=np.float64),
                rule=engine.threshold_rule,
                quantile=engine.threshold_quantile,
                max_false_reject=engine.max_false_reject,
            )
            threshold = point.threshold
            source.update(
                rule=point.description + f" (with {len(paths)} images added by update)",
                threshold=threshold,
                operating_point=point.to_dict(),
                scores={"good": [float(x) for x in good], "synthetic": synthetic},
                n_out_of_fold=len(good),
            )
        else:
            source["threshold"] = threshold  # a model fitted before its scores were kept
        entry = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "defectscope_version": __version__,
            "previous_model_sha256": file_sha256(self.model_file_)
            if getattr(self, "model_file_", None)
            else None,
            "added": len(paths),
            "added_sha256": [file_sha256(p) for p in paths],
            "escapes_sha256": [file_sha256(p) for p in escapes],
            "threshold_before": old_threshold,
            "threshold_after": threshold,
        }
        info["lineage"] = [*info.get("lineage", []), entry]
        info["threshold_source"] = source
        self._set_fitted(module, threshold, config, engine, info)
        return entry

    # -- persistence ----------------------------------------------------------------------------
    def saved_state(self) -> dict[str, Any]:
        """The tensors a model file holds: the module's fitted state, and the quantized feature
        graph of a model that scores in int8 (it depends on the training images, so it cannot
        be made again on load)."""
        state = dict(self.module_.fitted_state())
        int8 = getattr(getattr(self.module_, "embedding", None), "int8_graph", None)
        if int8 is not None:
            state[INT8_TENSOR] = np.frombuffer(int8, dtype=np.uint8)
        return state

    def save(self, path: str | Path) -> Path:
        """Write the model to one ``.safetensors`` file (atomically); returns its path."""
        from defectscope.engine.persistence.files import save_detector

        self.model_file_ = save_detector(self, path)
        return self.model_file_

    @classmethod
    def from_saved(
        cls,
        file: Path,
        header: dict[str, Any],
        read_tensors: Callable[[], dict[str, Any]],
        overrides: dict[str, Any],
    ) -> Detector:
        """The fitted detector a model file describes: its ``header`` (read and checksum-checked
        by :func:`~defectscope.engine.persistence.files.read_header`) checked field by field, then
        its tensors (``read_tensors()``, numpy) restored, torch-free where the lean path can run.
        ``overrides``: the options that may change on load (runtime, batch size, workers,
        progress, the weights file's new place)."""
        try:
            config = cls.info.config.from_dict(header["config"], where=f"{file}: ")
            engine = EngineOptions.from_dict(header["engine"], where=f"{file}: ")
            threshold = checked_threshold(header["fitted"]["threshold"])
            check_threshold_source(header["fitted"].get("threshold_source"), threshold)
            check_fit_info(header["fitted"])
        except (ConfigError, KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(
                f"{file} has an invalid config ({exc}); a newer defectscope may have written "
                "it, or it was edited: re-run `defectscope fit`"
            ) from exc
        detector = cls(**{**config.to_dict(), **engine.to_dict(), **overrides})
        config, engine = detector.options()  # with the overrides (e.g. a moved weights file)
        tensors = read_tensors()
        fitted = {k: v for k, v in header["fitted"].items() if k != "threshold"}
        int8 = tensors.pop(INT8_TENSOR, None)
        used = used_precision(fitted)
        if (int8 is not None) != (used == "int8") or (
            int8 is not None and (int8.dtype != np.uint8 or int8.ndim != 1)
        ):
            raise ModelFileError(
                f"{file}: its fit record says the features are computed in {used}, but the file "
                + ("holds no" if int8 is None else "holds a stray or malformed")
                + " int8 feature graph; re-run `defectscope fit`"
            )
        try:
            module = detector._restore(
                config, engine, tensors, fitted, None if int8 is None else int8.tobytes()
            )
        except DefectscopeError:
            raise
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise ModelFileError(
                f"{file} has tensors that do not fit its config ({exc}); re-run `defectscope fit`"
            ) from exc
        detector._end_stage()
        detector._set_fitted(module, threshold, config, engine, fitted)
        detector.model_file_ = file
        return detector

    def _restore(
        self,
        config,
        engine,
        tensors: dict[str, Any],
        fitted: dict[str, Any],
        int8_graph: bytes | None = None,
    ):
        """The scoring module of a model file's tensors: torch-free where the lean path can run
        (:mod:`defectscope.engine.runtimes.lean`), in the precision of the fit, else the
        detector's PyTorch module (fp32)."""
        from defectscope.engine.runtimes.lean import lean_key, lean_module

        on_stage = self._start_stages(engine)
        module = lean_module(self.name, config, engine, tensors, fitted, on_stage, int8_graph)
        if module is not None:
            return module
        used = used_precision(fitted)
        if used != "fp32" and lean_key(self.name, config, engine) is None:
            log.warning(
                "this model was fitted to score in %s on the torch-free path; with runtime %s it "
                "scores in fp32 in PyTorch, and its scores may differ slightly from the fit's",
                used,
                engine.runtime,
            )
        import warnings

        import torch

        with warnings.catch_warnings():
            # the arrays read from the file are read-only; the modules never write to them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            as_tensors = {k: torch.from_numpy(v) for k, v in tensors.items()}
        module = self.info.load().restore(config, as_tensors, fitted, self._hooks(engine))
        if lean_key(self.name, config, engine) is not None:
            # restoring exported the graph the lean path needs: score as every later load will
            lean = lean_module(self.name, config, engine, tensors, fitted, on_stage, int8_graph)
            if lean is not None:
                return lean
        return module


def class_docstring(info: DetectorInfo) -> str:
    """A numpydoc docstring for a generated estimator class, from its options' one-line help:
    Parameters (the detector's, then the engine's), Attributes and an Example."""
    import textwrap

    from defectscope.config import field_help, field_types

    def entries(cls) -> list[str]:
        helps, types = field_help(cls), field_types(cls)
        out = []
        for f in dataclasses.fields(cls):
            kind = str(types[f.name]).replace("typing.", "").replace("<class '", "")
            kind = kind.replace("'>", "")
            out.append(f"{f.name} : {kind}")
            out += textwrap.wrap(helps[f.name], 92, initial_indent="    ", subsequent_indent="    ")
        return out

    lines = [
        inspect.cleandoc(info.config.__doc__ or info.summary),
        "",
        f"In short: {info.summary}. Every option is also a flag of ``defectscope fit --model "
        f"{info.name}`` and a key of its config files.",
        "",
        "Parameters",
        "----------",
        *entries(info.config),
        *entries(EngineOptions),
        "",
        "Attributes",
        "----------",
        "module_ : the fitted scoring module (PyTorch, or numpy/ONNX Runtime on the lean path)",
        "threshold_ : float",
        "    the pass/fail threshold: a part fails when its score is above it",
        "config_ : the validated detector options",
        "fit_info_ : FitInfo",
        "    what the fit recorded: counts, scales, the threshold's source and expected rates",
        "",
        "Examples",
        "--------",
        f">>> model = defectscope.{info.class_name}(seed=0).fit('../shared/datasets/tire')",
        ">>> [p.is_anomalous for p in model.predict('../shared/datasets/tire/test/hole')]",
    ]
    return "\n".join(lines)


ESTIMATORS: dict[str, type[Detector]] = {
    name: type(
        info.class_name,
        (Detector,),
        {
            "info": info,
            "name": name,
            "__module__": __name__,
            "__doc__": class_docstring(info),
        },
    )
    for name, info in DETECTORS.items()
}


def estimator_class(name: str) -> type[Detector]:
    from defectscope.models import detector_info

    return ESTIMATORS[detector_info(name).name]


def make_detector(name: str, params: dict[str, Any]) -> Detector:
    """A new estimator by registry name with the given options."""
    return estimator_class(name)(**params)


def fit_shard(job: ShardJob) -> ShardResult:
    """Feed one shard's images to a new fitter; runs in whatever process the executor chose."""
    detector = make_detector(job.detector, {**job.params, "progress": False})
    return detector.fit_shard(job.paths, job.shared)
