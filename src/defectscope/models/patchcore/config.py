"""PatchCore's options (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from defectscope.config import option
from defectscope.models.common import ILLUMINATION, BackboneOptions

#: default feature layers per built-in backbone: the stride-8 and stride-16 stages (the paper's
#: "mid-level" features; the stride-4 stage costs 4x the patches for little gain, see the study)
DEFAULT_LAYERS = {
    "efficientnet_lite0": ("blocks.2", "blocks.4"),
    "efficientnet_lite1": ("blocks.2", "blocks.4"),
    "efficientnet_lite2": ("blocks.2", "blocks.4"),
    "resnet18": ("layer2", "layer3"),
    "wide_resnet50_2": ("layer2", "layer3"),
}
CORESET_METHODS = ("greedy", "approximate", "random", "none")
SEARCHES = ("auto", "exact", "ivf")
#: bank rows from which ``search="auto"`` uses the inverted-file index: below it the exact
#: search costs under 0.5 s per image and an index saves little (benchmarks/README.md, "Search")
IVF_FROM_ROWS = 50_000
#: lists an IVF search compares each patch with (of about 4 sqrt(bank rows))
IVF_PROBES = 16


@dataclass(frozen=True)
class PatchcoreConfig(BackboneOptions):
    """PatchCore (Roth et al., 2022): nearest-neighbour distance to a coreset memory bank of
    locally aware patch features."""

    scope: ClassVar[str] = "patchcore"

    image_size: int = option(320, "input side in pixels (the width where image_height is set)")
    illumination: str = option(
        "gain",
        "per-image lighting correction before the backbone: gain = scale every image to the "
        "training images' mean intensity; standardize = each channel to a fixed mean and spread; "
        "local = local contrast normalisation (15 px window)",
        choices=ILLUMINATION,
    )
    neighbourhood: int = option(3, "side of the local averaging window of patch features (odd)")
    coreset_ratio: float = option(0.01, "fraction of the training patches kept in the bank")
    coreset_method: str = option(
        "greedy",
        "greedy = exact greedy k-center; approximate = greedy on a random presample; "
        "random = a random subset; none = keep every patch",
        choices=CORESET_METHODS,
    )
    presample: float = option(0.1, "fraction of patches the approximate method starts from")
    projection_dim: int = option(
        32,
        "random projection the coreset distances are taken in (32: as accurate as 128 on "
        "screw and 4x faster, see the study)",
    )
    search: str = option(
        "auto",
        "how the torch-free path searches the bank: exact; ivf = an inverted-file index (the "
        "bank's k-means groups, the 16 nearest searched per patch: about 10x faster on 50,000 "
        "rows with the image AUROC unchanged, see benchmarks/README.md); auto = ivf from "
        "50,000 bank rows (the PyTorch runtime and exported files always search exactly)",
        choices=SEARCHES,
    )
    k_nearest: int = option(
        1,
        "a test patch scores its mean distance to its k nearest bank patches (1: the paper's "
        "nearest-neighbour distance)",
    )
    reweight: bool = option(False, "the paper's re-weighting of the image score by bank density")
    num_neighbors: int = option(9, "bank neighbours used by the re-weighting (the paper's b)")
    sigma: float = option(4.0, "standard deviation of the map's Gaussian smoothing, in pixels")
    memory_budget: float | None = option(
        None,
        "GB a fit's training patches may take in memory until the bank is selected: where the "
        "projections of all of them fit (140 bytes a patch for lite0), the bank is one exact "
        "greedy selection over every patch (the patches wait in an unnamed temporary file); "
        "above it they are reduced as they arrive (a coreset of twice the ratio per chunk of "
        "this size, waiting patches and their selection's working copy together), so a fit's "
        "memory stays bounded and its time linear whatever the number of images (default: "
        "0.1, or an eighth of the machine's memory if less)",
    )

    def validate(self) -> None:
        super().validate()
        if self.memory_budget is not None:
            total = machine_memory_gb()
            self.require(
                0.001 <= self.memory_budget <= total,
                "memory_budget",
                f"in [0.001, {total:.1f}] GB (this machine's memory)",
            )
        self.require(
            self.neighbourhood >= 1 and self.neighbourhood % 2 == 1, "neighbourhood", "odd, >= 1"
        )
        self.require(0 < self.coreset_ratio <= 1, "coreset_ratio", "in (0, 1]")
        self.require(0 < self.presample <= 1, "presample", "in (0, 1]")
        self.require(self.projection_dim >= 0, "projection_dim", ">= 0 (0: no projection)")
        self.require(self.num_neighbors >= 1, "num_neighbors", ">= 1")
        self.require(self.k_nearest >= 1, "k_nearest", ">= 1")
        self.require(
            self.search != "ivf" or (self.k_nearest == 1 and not self.reweight),
            "search",
            "exact or auto with k_nearest > 1 (the index finds the nearest row only) or reweight "
            "(which runs on PyTorch, searching exactly)",
        )
        self.require(
            self.sigma == 0 or 0.05 <= self.sigma <= 1000,
            "sigma",
            "0 (no smoothing) or in [0.05, 1000] pixels",
        )


#: the default budget of the patches waiting for their coreset, in GB: about 134,000 patches
#: of lite0's 152 dimensions with their 32-dimensional projection and distances (83 images at
#: 320 px; ``lean.row_bytes``). A chunk's greedy selection costs the square of its size, so a
#: fixed chunk keeps a fit's time linear in the images as well as its memory bounded. The same
#: budget holds the 32-dimensional projections of 714,000 patches (446 images at 320 px): up to
#: there the bank is one exact selection (``lean.ExactPool``; the shared categories' 334,000 to
#: 512,000 patches), whose time grows with the square of the patches: 17 s more in a screw fit.
DEFAULT_BUDGET_GB = 0.1


def machine_memory_gb() -> float:
    """This machine's physical memory in GB (8 where the system does not say)."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (AttributeError, OSError, ValueError):
        return 8.0


def memory_budget_bytes(config: PatchcoreConfig) -> int:
    """The patches' memory budget of ``config`` in bytes (its default resolved)."""
    gb = config.memory_budget
    if gb is None:
        gb = min(DEFAULT_BUDGET_GB, machine_memory_gb() / 8)
    return int(gb * 1e9)
