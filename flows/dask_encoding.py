"""Encoding on a Dask cluster through Prefect's ``DaskTaskRunner`` (prefect-dask).

The flow does not change with the executor: a subflow maps encoding shards to Prefect tasks on the
cluster, each shard visible in the Prefect UI and retried when a worker dies. Each task writes its
rows into the shared embedding cache; the flow's own encoding pass then finds them there. The cache
folder must therefore be one that every worker reaches (the same machine, or a shared file system).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.retry import transient_only
from itm_core.config import EncodingParams, ExecutorParams
from itm_core.contract.components import Encoder
from itm_core.data import ImageTextSet
from itm_core.encode.embed import EmbeddingCache, encode_into_cache, encoder_key
from itm_core.errors import PluginError

_WORKER_ENCODERS: dict[str, Any] = {}


def encoder_spec(encoder: Encoder) -> dict[str, Any]:
    """What a worker needs to build the same encoder: its name, options and fitted state."""
    return {
        "name": encoder.name,
        "options": dict(encoder.options),
        "state": encoder.get_state() if hasattr(encoder, "get_state") else None,
        "key": encoder_key(encoder),
    }


def worker_encoder(spec: dict[str, Any]) -> Any:
    """The encoder of ``spec``, built once per worker process."""
    if spec["key"] not in _WORKER_ENCODERS:
        from itm_core.contract.registry import create_encoder

        enc = create_encoder(spec, spec["state"])
        if encoder_key(enc) != spec["key"]:
            raise PluginError(
                f"encoder {spec['name']!r} built on a worker differs from the flow's (another plugin version?)"
            )
        _WORKER_ENCODERS[spec["key"]] = enc
    return _WORKER_ENCODERS[spec["key"]]


@task(name="encode-shard", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2, retry_condition_fn=transient_only)
def encode_shard(
    spec: dict[str, Any],
    items: Sequence[str],
    cache_folder: str,
    float16: bool,
    encoding: EncodingParams,
    threads: int | None,
) -> dict[str, float]:
    """Encode one shard of items into the cache on a worker; bad images are left for the flow to
    report. Returns the counts and when the shard started and finished (epoch seconds)."""
    import torch

    started = time.time()
    if threads:
        torch.set_num_threads(threads)
    options = encoding
    options.workers = 0  # Dask worker processes are daemonic: they cannot start loader processes
    options.shard_size = max(options.shard_size, len(items))
    encoded = encode_into_cache(worker_encoder(spec), items, EmbeddingCache(cache_folder, float16=float16), options)
    return {"items": len(items), "failed": len(encoded.failures), "started": started, "finished": time.time()}


@flow(name="encode-on-dask", log_prints=True)
def encode_shards(
    jobs: list[tuple[dict[str, Any], list[str]]],
    cache_folder: str,
    float16: bool,
    encoding: EncodingParams,
    threads: int | None,
) -> list[dict[str, float]]:
    """Map every (encoder, shard) job to a task on the cluster and wait for all of them."""
    futures = [encode_shard.submit(spec, items, cache_folder, float16, encoding, threads) for spec, items in jobs]
    return [f.result() for f in futures]


def task_runner(executor: ExecutorParams) -> Any:
    """The ``DaskTaskRunner`` for ``executor``: an existing cluster at ``address``, or a temporary
    ``distributed.LocalCluster`` of ``n_workers`` processes."""
    from prefect_dask import DaskTaskRunner

    if executor.address:
        return DaskTaskRunner(address=executor.address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": executor.n_workers,
            "threads_per_worker": executor.threads_per_worker,
            "processes": True,
            "dashboard_address": None,
        },
    )


def encode_on_dask(
    image_encoder: Encoder, text_encoder: Encoder, data: ImageTextSet, cache: EmbeddingCache, encoding: EncodingParams
) -> list[dict[str, float]]:
    """Fill ``cache`` with both towers' features of ``data``, shard by shard, on the cluster."""
    size = encoding.executor.shard_images
    paths = [os.path.abspath(p) for p in data.image_paths()]  # as the cache's file index records them
    captions = list(dict.fromkeys(data.captions))
    image, text = encoder_spec(image_encoder), encoder_spec(text_encoder)
    jobs = [(image, paths[i : i + size]) for i in range(0, len(paths), size)]
    jobs += [(text, captions[i : i + 5 * size]) for i in range(0, len(captions), 5 * size)]
    threads = None if encoding.executor.address else encoding.executor.threads_per_worker
    runner = task_runner(encoding.executor)
    return encode_shards.with_options(task_runner=runner)(
        jobs, str(cache.folder.resolve()), cache.float16, encoding, threads
    )
