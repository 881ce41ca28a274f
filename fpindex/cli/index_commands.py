"""Commands on vectors and indexes alone: index precomputed embeddings, sharded builds, the index benchmark."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from ..config import IndexConfig
from ..index import parse_bytes
from .help import App
from .streams import echo_json
from .options import (O_DEVICE, O_EF_SEARCH, O_FACTORY, O_MAX_MEMORY, O_NPROBE, O_QUIET, O_SEED, O_TARGET,
                      Device)


def _index_cfg(factory, max_memory, nprobe, ef_search, target_recall, device, seed) -> IndexConfig:
    return IndexConfig(factory=factory, max_memory=parse_bytes(max_memory), nprobe=nprobe, ef_search=ef_search,
                       target_recall=target_recall, device=device.value if isinstance(device, Enum) else device,
                       seed=seed)


def register(app: typer.Typer) -> None:
    """Add these commands to the main app (cli/__init__.py)."""
    app.command("index-embeddings", epilog="Example (after build's): fpindex index-embeddings emb.parquet --index "
                                           "indexes/from-vectors --max-memory 1G")(index_embeddings_cmd)
    shard_app = App(help="Build an IVF index in shards (separate processes or machines) and merge them "
                         "with on-disk inverted lists. Steps: train → add (once per part, anywhere) → merge.",
                    no_args_is_help=True)
    shard_app.command("train", epilog="Example (after build's): fpindex shard train emb.parquet --work shards/ "
                                      "--index-type IVF2,Flat")(shard_train_cmd)
    shard_app.command("add", epilog="Example (once per part, 0 then 1): fpindex shard add --work shards/ --part 0 --parts 2")(shard_add_cmd)
    shard_app.command("merge", epilog="Example: fpindex shard merge --work shards/ --parts 2 --index indexes/merged")(
        shard_merge_cmd)
    app.add_typer(shard_app, name="shard")
    app.command(epilog="Example: fpindex bench --n 20000 --dim 64 --index-type auto --json")(bench)


def index_embeddings_cmd(
    embeddings: Path = typer.Argument(..., help="A .parquet file from `fpindex build --save-embeddings` (or any "
                                      "n × d float32 .npy of L2-normalised vectors)."),
    index: Path = typer.Option(..., "--index", "-i", help="Index directory to write."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index."),
    factory: str = O_FACTORY, max_memory: Optional[str] = O_MAX_MEMORY, nprobe: Optional[int] = O_NPROBE,
    ef_search: Optional[int] = O_EF_SEARCH, target_recall: float = O_TARGET, seed: int = O_SEED,
    device: Device = O_DEVICE, quiet: bool = O_QUIET,
) -> None:
    """Index precomputed embeddings (the indexing stage alone), streaming the file batch by batch."""
    from ..index import index_embeddings

    store = index_embeddings(embeddings, index, _index_cfg(factory, max_memory, nprobe, ef_search, target_recall,
                                                           device, seed), overwrite=overwrite)
    if not quiet:
        typer.echo(_index_line(index, store))


def _index_line(index: Path, store) -> str:
    t = store.manifest.get("tuning") or {}
    tuned = (f" · {t['chosen']} (recall@{t['k']} {t['recall']:.3f} on {t['queries']} held-out queries)"
             if t.get("chosen") else "")
    return f"index {index}: {store.ntotal} vectors · {store.dim}-d · {store.manifest['factory']}{tuned}"


def shard_train_cmd(
    embeddings: Path = typer.Argument(..., help="Embeddings file (.parquet or .npy)."),
    work: Path = typer.Option(..., "--work", help="Shared folder for the trained index, shards and plan."),
    factory: str = O_FACTORY, max_memory: Optional[str] = O_MAX_MEMORY, nprobe: Optional[int] = O_NPROBE,
    target_recall: float = O_TARGET, seed: int = O_SEED,
) -> None:
    """Train one empty IVF index on a seeded sample of the embeddings."""
    from ..index import shard_train

    plan = shard_train(embeddings, work, _index_cfg(factory, max_memory, nprobe, None, target_recall, "cpu", seed))
    typer.echo(f"trained {plan['factory']} for {plan['n']:,} × {plan['dim']}-d in {work}")


def shard_add_cmd(
    work: Path = typer.Option(..., "--work", help="Folder written by `fpindex shard train`."),
    part: int = typer.Option(..., "--part", min=0, help="This shard's number, 0 … parts-1."),
    parts: int = typer.Option(..., "--parts", min=1, help="Number of shards."),
    embeddings: Optional[Path] = typer.Option(None, "--embeddings", help="The embeddings file as seen from this "
                                              "machine. Default: the path recorded by `shard train`."),
) -> None:
    """Add one contiguous slice of the embeddings to a copy of the trained index."""
    from ..index import shard_add

    typer.echo(f"wrote {shard_add(work, part, parts, embeddings)}")


def shard_merge_cmd(
    work: Path = typer.Option(..., "--work", help="Folder with the trained index and every shard."),
    parts: int = typer.Option(..., "--parts", min=1, help="Number of shards."),
    index: Path = typer.Option(..., "--index", "-i", help="Index directory to write."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index."),
) -> None:
    """Merge the shards into one index whose inverted lists stay on disk (memory-mapped)."""
    from ..index import shard_merge

    typer.echo(_index_line(index, shard_merge(work, index, parts, overwrite=overwrite)))


def bench(
    n: int = typer.Option(100_000, "--n", min=1, help="Vectors in the database (with --embeddings: at most)."),
    dim: int = typer.Option(256, "--dim", min=2, help="Dimension of the synthetic vectors."),
    factory: str = O_FACTORY, k: int = typer.Option(10, "--k", "-k", min=1, help="Neighbours per query."),
    max_memory: Optional[str] = O_MAX_MEMORY, nprobe: Optional[int] = O_NPROBE,
    ef_search: Optional[int] = O_EF_SEARCH, target_recall: float = O_TARGET,
    embeddings: Optional[Path] = typer.Option(None, "--embeddings", help="Benchmark on real vectors from a "
                                              ".parquet/.npy embeddings file instead of synthetic ones."),
    queries: int = typer.Option(1000, "--queries", min=10, help="Held-out evaluation queries."),
    tune_queries: int = typer.Option(500, "--tune-queries", min=10, help="Held-out queries for tuning."),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Timed runs after one warm-up; the median is kept."),
    single: int = typer.Option(200, "--single", min=1, help="Queries timed one at a time."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic data and samples."),
    device: Device = typer.Option(Device("cpu"), "--device", help="Where FAISS runs; auto picks a GPU when "
                                  "FAISS has GPU support and sees one."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    save: Optional[Path] = typer.Option(None, "--save", help="Also write the JSON result to this file."),
) -> None:
    """Build an index on seeded synthetic (or real) vectors; time it and measure recall against exact search."""
    from ..index import run_bench
    from ..index import format_bytes, parse_bytes
    from ..safeio import same_json_keys, write_json_atomic

    r = run_bench(n, dim, factory, k=k, budget=parse_bytes(max_memory), n_eval=queries, n_tune=tune_queries,
                  seed=seed, embeddings=embeddings, repeats=repeats, n_single=single, device=device.value,
                  nprobe=nprobe, ef_search=ef_search, target=target_recall)
    if save:
        write_json_atomic(save, r, owned=same_json_keys(r))
    if as_json:
        echo_json(json.dumps(r))
        return
    typer.echo(f"{r['factory']} · {r['n']:,} × {r['dim']}-d · {r['device']} · params {r['search_params']}\n"
               f"build {r['build_s']:.1f} s · index {format_bytes(r['index_bytes'])} · peak RSS "
               f"{format_bytes(r['peak_rss_bytes'])}\n"
               f"recall@1 {r['recall_at_1']:.3f} · recall@10 {r['recall_at_10']:.3f} · {r['qps']:,.0f} q/s batch, "
               f"{r['qps_single']:,.0f} q/s single · exact {r['exact_qps']:,.1f} q/s ({r['speedup_vs_exact']}×)")


