"""The ``mcssl`` command: thin wrappers over library functions, one line per user error."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path

FACETS = ("tokens", "keys", "keys+concepts")  # = mcssl.explore.encoder.FACETS (timm: slow import)


def _train(args: argparse.Namespace) -> int:
    from mcssl.config import apply_overrides, load_config
    from mcssl.evaluation.online import online_monitors
    from mcssl.train import load_run_config, train

    if args.config:
        cfg = load_config(args.config, args.overrides)
    elif args.resume:
        cfg = apply_overrides(load_run_config(args.out), args.overrides)
    else:
        raise SystemExit("mcssl train: error: --config is required (unless --resume)")
    summary = train(cfg, args.out, resume=args.resume, monitors=online_monitors(cfg))
    if int(os.environ.get("RANK", 0)) == 0:
        done = "stopped after" if summary["stopped"] else "trained"
        print(f"mcssl: {done} {summary['steps']} steps in {summary['wall_s']:.1f}s -> {args.out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from mcssl.checkpoint import export_teacher, export_timm

    if args.format == "timm":
        info = export_timm(args.run, args.out, args.dtype)
        sidecar = Path(args.out).with_suffix(".json")
        print(
            f"mcssl: exported teacher backbone for timm ({info['model_name']}, step "
            f"{info['steps']}) -> {args.out} (model name and kwargs in {sidecar})"
        )
        return 0
    meta = export_teacher(args.run, args.out, args.dtype)
    print(f"mcssl: exported teacher ({meta['arch']}, step {meta['steps']}) -> {args.out}")
    return 0


def _extractor(args: argparse.Namespace, checkpoint: str):
    """The encoder with the settings given, else the checkpoint's stored defaults, else
    resolution 224, the last layer and its output tokens."""
    from mcssl.explore.encoder import load_encoder
    from mcssl.explore.features import FeatureExtractor, Settings, chosen

    enc = load_encoder(checkpoint, args.device)
    picked = chosen(enc.defaults, resolution=args.resolution, layer=args.layer, facet=args.facet)
    _say_stored(enc.defaults, args)
    precision = "fp32" if args.fp32 else "auto"
    return FeatureExtractor(enc, Settings(**picked, precision=precision))  # type: ignore[arg-type]


def _say_stored(stored: dict, args: argparse.Namespace) -> list[str]:
    """Prints (to stderr) which of the checkpoint's stored defaults are used; -> their names."""
    used = [k for k in stored if getattr(args, k, None) is None]
    if used:
        shown = ", ".join(f"{k} {stored[k]}" for k in used)
        print(f"mcssl: the checkpoint's stored defaults: {shown}", file=sys.stderr)
    return used


def _concepts(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mcssl.explore.pipeline import analyse, concepts_json, expand_inputs, write_concepts

    ex = _extractor(args, args.checkpoint)
    paths = expand_inputs(args.images)
    results = analyse(ex, paths, tuple(args.k), args.seed, args.cocluster)
    out = Path(args.out)
    records = write_concepts(results, out, args.alpha, args.smooth)
    s = ex.settings
    settings = {
        "k": args.k,
        "resolution": s.resolution,
        "layer": s.layer,
        "facet": s.facet,
        "from_checkpoint": [k for k in ex.encoder.defaults if getattr(args, k) is None],
        "seed": args.seed,
        "smooth": args.smooth,
        "alpha": args.alpha,
        "cocluster": args.cocluster,
    }
    text = concepts_json(records, args.checkpoint, ex.encoder.digest, settings)
    (out / "concepts.json").write_text(text)
    failed = [r.error for r in results if r.error]
    for err in failed:
        print(f"mcssl concepts: error: {err}", file=sys.stderr)
    print(f"mcssl: {len(results) - len(failed)} of {len(results)} images -> {out}/concepts.json")
    return 1 if failed else 0


def _index(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from mcssl.explore.pipeline import build_index, expand_inputs

    ex = _extractor(args, args.checkpoint)
    index, errors = build_index(ex, expand_inputs(args.inputs), args.kind)
    out = Path(args.out)
    index.save(out)
    source = {
        "checkpoint": args.checkpoint,
        "checkpoint_digest": ex.encoder.digest,
        "resolution": ex.settings.resolution,
        "layer": ex.settings.layer,
        "facet": ex.settings.facet,
        "precision": "fp32" if args.fp32 else "auto",
    }
    (out / "source.json").write_text(json.dumps(source, indent=1))
    for err in errors:
        print(f"mcssl index: error: {err}", file=sys.stderr)
    print(f"mcssl: indexed {index.ntotal} tokens of {len(index.images)} images -> {out}")
    return 1 if errors else 0


def _query(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from mcssl.explore.index import TokenIndex
    from mcssl.explore.pipeline import query_image_cluster, query_image_token

    index = TokenIndex.load(args.index)
    source = json.loads((Path(args.index) / "source.json").read_text())
    image = Path(args.image)
    ex = None  # an indexed image's tokens come from the index; otherwise embed it the same way
    if args.cluster or not any(Path(r["path"]) == image for r in index.images):
        args.resolution, args.layer = source["resolution"], source["layer"]
        args.facet = source.get("facet", "tokens")  # indexes from before facets: tokens
        args.fp32 = args.fp32 or source.get("precision") == "fp32"  # embed as the index did
        ex = _extractor(args, args.checkpoint or source["checkpoint"])
    filters = {
        "same_concept": args.same_concept,
        "exclude_own": args.exclude_own,
        "one_per_image": args.one_per_image,
    }
    if args.cluster:
        hits = query_image_cluster(index, ex, image, *args.cluster, top=args.top, **filters)
    else:
        hits = query_image_token(index, ex, image, *args.token, top=args.top, **filters)
    for h in hits:
        row = {
            "image": h.path,
            "row": h.row,
            "col": h.col,
            "score": round(float(h.score), 6),
            "pseudo_concept": h.concept,
        }
        print(json.dumps(row))
    return 0


def _eval_concepts(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from mcssl.evaluation.concepts import evaluate, format_table
    from mcssl.explore.encoder import load_encoder
    from mcssl.explore.features import chosen

    enc = load_encoder(args.checkpoint, args.device)
    fallback = {"resolution": None, "layer": -1, "facet": "tokens"}  # None: training size
    picked = chosen(enc.defaults, fallback, resolution=args.resolution, layer=args.layer,
                    facet=args.facet)  # fmt: skip
    _say_stored(enc.defaults, args)
    if picked["resolution"] is None and "img_size" not in enc.info:
        print("mcssl: the checkpoint does not say its training size; using the images' size")
    result = evaluate(
        enc, args.data, args.seeds, picked["resolution"], picked["layer"],  # type: ignore[arg-type]
        not args.no_baselines, args.modes, picked["facet"],  # type: ignore[arg-type]
    )  # fmt: skip
    result["checkpoint"] = args.checkpoint
    result["settings"] = picked
    print(format_table(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"mcssl: results -> {args.out}")
    return 0


def _eval_defaults(args: argparse.Namespace) -> int:
    import json
    import time

    from mcssl.checkpoint import CheckpointError, store_defaults
    from mcssl.evaluation.defaults import format_grid, search
    from mcssl.explore.encoder import load_encoder, resolve_checkpoint

    path = resolve_checkpoint(args.checkpoint)
    if args.write and path.suffix != ".safetensors":  # say so before the grid, not after
        raise CheckpointError(
            f"{path}: --write stores the defaults in an mcssl export (.safetensors); export the "
            "run first: mcssl export RUN --out FILE.safetensors"
        )
    enc = load_encoder(args.checkpoint, args.device)
    t0 = time.perf_counter()
    result = search(enc, args.data, args.seeds, args.modes, args.resolutions, args.layers,
                    args.facets, log=lambda m: print(f"mcssl: {m}", file=sys.stderr))  # fmt: skip
    result |= {"checkpoint": args.checkpoint, "wall_s": round(time.perf_counter() - t0, 1)}
    print(format_grid(result))
    best = {k: result["best"][k] for k in ("resolution", "layer", "facet")}
    print(f"mcssl: best {best} (score {result['best']['score']:.3f}) in {result['wall_s']} s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    if args.write:
        seeds = " ".join(map(str, args.seeds))
        top = result["best"]["score"]
        note = f"mcssl eval defaults, {args.data} seeds {seeds}, score {top:.3f}"
        store_defaults(path, best, note)
        print(f"mcssl: stored the defaults in {path}")
    return 0


def _eval_knn(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from mcssl.evaluation.knn import ImageFolder, knn_eval
    from mcssl.explore.encoder import load_encoder

    enc = load_encoder(args.checkpoint, args.device)
    train, val = ImageFolder.read(args.train), ImageFolder.read(args.val)
    res = args.resolution or int(enc.info.get("img_size", 224))
    result = knn_eval(enc, train, val, res, args.k) | {"checkpoint": args.checkpoint, "k": args.k}
    print(
        f"kNN (k={args.k}) top-1 {result['knn_top1']:.4f} top-5 {result['knn_top5']:.4f} "
        f"({result['train_images']} train / {result['test_images']} val images)"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


def _eval_finetune(args: argparse.Namespace) -> int:
    from mcssl.evaluation.concepts import random_like
    from mcssl.evaluation.datasets import read
    from mcssl.evaluation.finetune import FinetuneConfig, finetune
    from mcssl.explore.encoder import load_encoder

    enc = load_encoder(args.checkpoint)
    if args.random_init:  # the same architecture, untrained: the baseline
        enc = random_like(enc, args.seed)
    train, val = read(args.format, args.train, args.val, args.images)
    cfg = FinetuneConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, img_size=args.img_size,
        frozen=args.eval_command == "linear", randaugment=args.randaugment,
        autoaugment=args.autoaugment, mixup=args.mixup, cutmix=args.cutmix,
        label_smoothing=args.label_smoothing, gamma_neg=args.gamma_neg, workers=args.workers,
        seed=args.seed,
    )  # fmt: skip
    res = finetune(enc, train, val, cfg, args.out, args.resume)
    if int(os.environ.get("RANK", 0)) == 0:
        keys = ("mAP", "CF1", "OF1") if res["task"] == "multilabel" else ("top1", "top5")
        shown = " ".join(f"{k} {res[k]:.4f}" for k in keys)
        print(f"mcssl: {args.eval_command} {res['task']} {shown} -> {args.out}/results.json")
    return 0


def _add_finetune_options(p: argparse.ArgumentParser, lr: float) -> None:
    p.add_argument("--checkpoint", default="default", help="as for `mcssl concepts`")
    kinds = "folder: multi-class ImageFolder; voc / coco / csv: multi-label"
    p.add_argument(
        "--format", choices=("folder", "voc", "coco", "csv"), default="folder", help=kinds
    )
    p.add_argument("--train", required=True, help="folder / VOC split / COCO json / CSV")
    p.add_argument("--val", required=True, help="the same for validation")
    p.add_argument("--images", help="VOC root (voc) or the image folder (coco)")
    p.add_argument("--out", required=True, help="output folder (metrics, last.pt, results)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--lr", type=float, default=lr, help="for a total batch of 256")
    p.add_argument("--img-size", type=int, default=224, help="the paper: 448 for multi-label")
    p.add_argument("--randaugment", action="store_true")
    p.add_argument("--autoaugment", action="store_true", help="ImageNet policy (DeiT)")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="multi-class")
    p.add_argument("--mixup", type=float, default=0.0, help="alpha; multi-class; DeiT: 0.8")
    p.add_argument("--cutmix", type=float, default=0.0, help="alpha; multi-class; DeiT: 1.0")
    p.add_argument("--gamma-neg", type=float, default=4.0, help="asymmetric loss, multi-label")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue OUT/last.pt")
    p.add_argument("--random-init", action="store_true", help="baseline: untrained backbone")
    p.set_defaults(fn=_eval_finetune)


def _doctor(args: argparse.Namespace) -> int:
    from mcssl.doctor import format_report, report

    checks = report()
    print(format_report(checks))
    return 1 if any(not c.ok and c.essential for c in checks) else 0


def _cache(args: argparse.Namespace) -> int:
    from mcssl.train.imagecache import build_cache

    info = build_cache(args.data, args.out, args.size, args.workers)
    print(
        f"mcssl: cached {info['count']} images at {info['size']} px in {info['seconds']} s "
        f"({len(info['skipped'])} skipped) -> {args.out}; train with data.path=cache:{args.out}"
    )
    return 0


def _add_model_options(
    p: argparse.ArgumentParser,
    checkpoint_default: str | None,
    precision: bool = True,
    settings: bool = True,
) -> None:
    p.add_argument(
        "--checkpoint",
        default=checkpoint_default,
        help="default | export .safetensors | run folder | .pt/.pth (MC-SSL, DINO, iBOT, timm)",
    )
    stored = "default: the checkpoint's stored default (`mcssl eval defaults --write`), else"
    p.add_argument("--resolution", type=int, help=f"shorter image side (pixels); {stored} 224")
    if settings:
        p.add_argument(
            "--layer", type=int, help=f"block whose features are used (-1 = last); {stored} -1"
        )
        p.add_argument(
            "--facet",
            choices=FACETS,
            help="the block's output tokens, its attention keys (all heads), or the keys beside "
            f"the pseudo-concept probabilities (needs a concept head); {stored} tokens",
        )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    if precision:
        p.add_argument(
            "--fp32",
            action="store_true",
            help="run the encoder in fp32 (default: bf16 where the CPU/GPU computes it natively)",
        )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mcssl",
        description="Multi-concept self-supervised ViTs.",
        epilog="Exit codes: 0 ok; 1 some input failed (e.g. an unreadable image: one line "
        "each, the rest is processed); 2 usage error, bad config or unusable checkpoint (one "
        "line: what is wrong and what is accepted); 130 interrupted.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train MC-SSL0.0 (use torchrun for several processes)")
    t.add_argument("--config", help="recipe YAML, or a name in mcssl/configs (e.g. smoke)")
    t.add_argument("--out", required=True, help="run folder (checkpoints, metrics, config)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. optim.epochs=10")
    t.set_defaults(fn=_train)

    e = sub.add_parser("export", help="export a run's teacher to .safetensors (or for timm)")
    e.add_argument("run", help="run folder or last.pt")
    e.add_argument("--out", required=True, help="output .safetensors file (timm: or .pth)")
    e.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    e.add_argument(
        "--format",
        choices=("mcssl", "timm"),
        default="mcssl",
        help="mcssl: backbone + concept head + centre (the explorer's input); timm: the "
        "backbone as a plain timm state dict, model name and kwargs in OUT.json",
    )
    e.set_defaults(fn=_export)

    ca = sub.add_parser("cache", help="decode + resize a dataset once into a .npy image cache")
    ca.add_argument("data", help="any data.path source: folder, .txt list, samples, synthetic:N")
    ca.add_argument("out", help="output .npy (and .json beside it)")
    ca.add_argument("--size", type=int, default=256, help="side of the stored squares")
    ca.add_argument("--workers", type=int, default=4, help="decoding processes")
    ca.set_defaults(fn=_cache)

    c = sub.add_parser("concepts", help="k-means concept masks (+ pseudo-concepts) per image")
    _add_model_options(c, "default")
    c.add_argument("--k", type=int, nargs="+", default=[2, 3, 4], choices=range(2, 9))
    c.add_argument("--out", required=True, help="output folder (PNGs + concepts.json)")
    c.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    c.add_argument("--smooth", action="store_true", help="smooth mask upsampling")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument(
        "--cocluster",
        action="store_true",
        help="one k-means over all images: a concept id means the same everywhere",
    )
    c.add_argument("images", nargs="+", help="image files or folders")
    c.set_defaults(fn=_concepts)

    i = sub.add_parser("index", help="FAISS index over the tokens of a gallery")
    _add_model_options(i, "default")
    i.add_argument("--out", required=True, help="index folder")
    i.add_argument("--kind", choices=("auto", "flat", "pq", "ivf", "hnsw"), default="auto")
    i.add_argument("inputs", nargs="+", help="image files or folders")
    i.set_defaults(fn=_index)

    q = sub.add_parser("query", help="tokens most similar to one token (JSON lines)")
    _add_model_options(q, None)
    q.add_argument("--index", required=True, help="index folder from `mcssl index`")
    q.add_argument("--image", required=True, help="an indexed image, or a new one")
    what = q.add_mutually_exclusive_group(required=True)
    what.add_argument("--token", type=int, nargs=2, metavar=("ROW", "COL"))
    what.add_argument(
        "--cluster",
        type=int,
        nargs=2,
        metavar=("K", "C"),
        help="the mean of cluster C of a k-means with K clusters of the image",
    )
    q.add_argument("--top", type=int, default=10)
    q.add_argument("--same-concept", action="store_true", help="same argmax pseudo-concept only")
    q.add_argument("--exclude-own", action="store_true", help="skip the query's own image")
    q.add_argument("--one-per-image", action="store_true", help="best token per image only")
    q.set_defaults(fn=_query)

    ev = sub.add_parser("eval", help="evaluate a checkpoint")
    evs = ev.add_subparsers(dest="eval_command", required=True)
    ec = evs.add_parser(
        "concepts", help="concept discovery vs ground-truth masks (ARI, mIoU, NMI) + baselines"
    )
    _add_model_options(ec, "default", precision=False)
    ec.add_argument(
        "--data",
        default="synthetic:200",
        help="synthetic:N (generated scenes) or a folder with images/ and masks/<name>.png",
    )
    ec.add_argument("--seeds", type=int, nargs="+", default=[0], help="scene + k-means seeds")
    ec.add_argument(
        "--modes",
        nargs="+",
        default=["fixed"],
        choices=["fixed", "varied"],
        help="scene modes (synthetic data): fixed = a class keeps its colour; varied = random "
        "colour per object, colour cast and lighting per image",
    )
    ec.add_argument(
        "--no-baselines",
        action="store_true",
        help="skip random ViT, pixels, colour + texture stats",
    )
    ec.add_argument("--out", help="write the results as JSON here")
    ec.set_defaults(fn=_eval_concepts)
    ed = evs.add_parser(
        "defaults",
        help="score resolution x layer x facet on the concept benchmark; --write stores the best",
        description="Scores a grid of settings with `mcssl eval concepts`' metrics; score = "
        "mean over modes of (per-image ARI + co-clustering NMI) / 2. The app, `mcssl concepts`"
        " and `mcssl eval concepts` use the stored best when no setting is given.",
    )
    ed.add_argument("--checkpoint", default="default", help="as for `mcssl concepts`")
    ed.add_argument("--data", default="synthetic:200", help="as for `mcssl eval concepts`")
    ed.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="scene seeds")
    ed.add_argument("--modes", nargs="+", default=["fixed", "varied"], choices=["fixed", "varied"])
    ed.add_argument(
        "--resolutions", type=int, nargs="+", help="default: the training size and twice it"
    )
    ed.add_argument(
        "--layers", type=int, nargs="+", help="default: the second half of the blocks (at least 4)"
    )
    ed.add_argument(
        "--facets", nargs="+", choices=FACETS, help="default: every facet the checkpoint has"
    )
    ed.add_argument("--device", default="cpu", help="cpu or cuda")
    ed.add_argument("--out", help="write the grid as JSON here")
    ed.add_argument(
        "--write",
        action="store_true",
        help="store the best in the checkpoint's metadata (an export; tensors unchanged)",
    )
    ed.set_defaults(fn=_eval_defaults)
    ek = evs.add_parser("knn", help="weighted kNN on mean data-token features (ImageFolders)")
    _add_model_options(ek, "default", precision=False, settings=False)
    ek.set_defaults(resolution=None)  # None = the checkpoint's training size
    ek.add_argument("--train", required=True, help="ImageFolder: one sub-folder per class")
    ek.add_argument("--val", required=True, help="ImageFolder with the same classes")
    ek.add_argument("--k", type=int, default=20, help="neighbours")
    ek.add_argument("--out", help="write the results as JSON here")
    ek.set_defaults(fn=_eval_knn)
    _add_finetune_options(
        evs.add_parser("finetune", help="fine-tune the backbone + a head (multi-class/-label)"),
        1e-4,
    )
    _add_finetune_options(
        evs.add_parser("linear", help="train a head on the frozen backbone (linear probe)"), 1e-3
    )

    d = sub.add_parser("doctor", help="versions, devices, bundled checkpoint, runs folder")
    d.set_defaults(fn=_doctor)
    return p


def reference() -> str:
    """Markdown CLI reference (docs/CLI.md) from the parser itself, at a fixed width."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        parser = build_parser()
        parts = ["# CLI reference\n", "Generated by `make docs` from `mcssl/cli.py`.\n"]
        parts.append(f"```text\n{parser.format_help()}```\n")
        for name, sub in _subparsers(parser):
            parts.append(f"## mcssl {name}\n\n```text\n{sub.format_help()}```\n")
        return "\n".join(parts)
    finally:
        if old is None:
            os.environ.pop("COLUMNS")
        else:
            os.environ["COLUMNS"] = old


def _subparsers(parser: argparse.ArgumentParser, prefix: str = ""):
    for action in parser._actions:  # argparse keeps sub-commands here only
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix}{name}", sub
                yield from _subparsers(sub, f"{prefix}{name} ")


def _user_errors() -> tuple[type[Exception], ...]:
    from mcssl.checkpoint import CheckpointError
    from mcssl.config import ConfigError
    from mcssl.evaluation.concepts import BenchmarkError
    from mcssl.evaluation.knn import LabelledDataError
    from mcssl.explore.encoder import EncoderError
    from mcssl.images import ImageError
    from mcssl.train import TrainError
    from mcssl.train.sources import CacheError, DataError

    errors: list[type[Exception]] = [
        ConfigError,
        DataError,
        TrainError,
        CheckpointError,
        ImageError,
        EncoderError,
        BenchmarkError,
        LabelledDataError,
        CacheError,
    ]
    # retrieval's errors need faiss, which training and evaluation do not (the lent GPU
    # machines have none, and nothing installs there)
    with contextlib.suppress(ImportError):
        from mcssl.explore.index import TokenIndexError

        errors.append(TokenIndexError)
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="mcssl: %(message)s")
    logging.getLogger("mcssl").setLevel(logging.INFO)  # ours at INFO; libraries stay quiet
    args = build_parser().parse_args(argv)
    errors = _user_errors()
    try:
        return args.fn(args)
    except errors as e:
        from mcssl.config import ConfigError

        rank = os.environ.get("RANK")
        prefix = f"[rank {rank}] " if rank not in (None, "0") else ""
        command = " ".join(filter(None, (args.command, getattr(args, "eval_command", None))))
        print(f"mcssl {command}: error: {prefix}{e}", file=sys.stderr)
        from mcssl.explore.encoder import EncoderError

        return 2 if isinstance(e, (ConfigError, EncoderError)) else 1
    except ModuleNotFoundError as e:  # only retrieval needs faiss; training runs without it
        if e.name != "faiss":
            raise
        print(f"mcssl {args.command}: error: needs faiss (pip install faiss-cpu)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mcssl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
