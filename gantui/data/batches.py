"""The batch stream a config asks for: the one place that chooses between the sources and the
prepared-image cache (which sits above the sources it reads)."""

from __future__ import annotations

from pathlib import Path

import torch

from gantui.config import POINT_SETS, Config
from gantui.data import datasets
from gantui.data.cache import CachedBatches, open_prepared
from gantui.data.sources import (
    WHOLE,
    Batches,
    DataError,
    FolderBatches,
    MixtureBatches,
    Shard,
    memory_batches,
    mnist_batches,
    per_rank,
    stacked_mnist_batches,
)


def make_batches(cfg: Config, device: torch.device, shard: Shard = WHOLE) -> Batches:
    """The batch stream ``cfg`` asks for (this rank's shard of it).

    Raises:
        DataError: the data is missing, empty or too small, with what was expected.
    """
    if cfg.dataset in POINT_SETS:
        return MixtureBatches(cfg.dataset, cfg.batch_size, cfg.seed, device, shard)
    if cfg.dataset == "stacked_mnist":
        return stacked_mnist_batches(cfg, device, shard)
    if cfg.dataset == "mnist":
        return mnist_batches(cfg, device, shard)
    if cfg.dataset in datasets.MEMORY_SETS:
        return memory_batches(cfg, device, shard)
    if not cfg.data:
        raise DataError("dataset 'folder' needs --data PATH: a folder of images "
                        "(e.g. CelebA's img_align_celeba)")
    if cfg.data_cache:
        root = Path(cfg.data).expanduser()
        prepared = open_prepared(root, cfg.image_size, cfg.channels)
        # a conditional run needs the cache's labels, for the classes the run was given
        if prepared is not None and (not cfg.conditional or (
                prepared.labels is not None and prepared.class_names == tuple(cfg.class_names))):
            batches = CachedBatches(prepared, root, cfg, device, shard)
            if shard.size(batches.n) < cfg.batch_size:
                raise DataError(f"{root}: {batches.n} images{per_rank(shard)}, fewer "
                                f"than batch_size {cfg.batch_size}")
            return batches
        if prepared is not None:
            batches = FolderBatches(cfg, device, shard)
            batches.note += (f"; its prepared cache holds no labels for these classes (rerun "
                             f"`gantui prepare {root} --size {cfg.image_size}`)")
            return batches
    return FolderBatches(cfg, device, shard)
