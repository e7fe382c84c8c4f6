"""The ``mcssl`` command: thin wrappers over library functions, one line per user error."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def _train(args: argparse.Namespace) -> int:
    from mcssl.config import load_config
    from mcssl.train import load_run_config, train

    if args.config:
        cfg = load_config(args.config, args.overrides)
    elif args.resume:
        from mcssl.config import _merge, parse_overrides, validate

        cfg = load_run_config(args.out)
        _merge(cfg, parse_overrides(args.overrides))
        validate(cfg)
    else:
        raise SystemExit("mcssl train: error: --config is required (unless --resume)")
    summary = train(cfg, args.out, resume=args.resume)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"mcssl: trained {summary['steps']} steps in {summary['wall_s']:.1f}s -> {args.out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from mcssl.checkpoint import export_teacher

    meta = export_teacher(args.run, args.out, args.dtype)
    print(f"mcssl: exported teacher ({meta['arch']}, step {meta['steps']}) -> {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mcssl", description="Multi-concept self-supervised ViTs.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train MC-SSL0.0 (use torchrun for several processes)")
    t.add_argument("--config", help="recipe YAML, or a name in mcssl/configs (e.g. smoke)")
    t.add_argument("--out", required=True, help="run folder (checkpoints, metrics, config)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. optim.epochs=10")
    t.set_defaults(fn=_train)

    e = sub.add_parser("export", help="export a run's teacher to .safetensors")
    e.add_argument("run", help="run folder or last.pt")
    e.add_argument("--out", required=True, help="output .safetensors file")
    e.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    e.set_defaults(fn=_export)
    return p


def _user_errors() -> tuple[type[Exception], ...]:
    from mcssl.checkpoint import CheckpointError
    from mcssl.config import ConfigError
    from mcssl.data import DataError
    from mcssl.images import ImageError
    from mcssl.train import TrainError

    return ConfigError, DataError, TrainError, CheckpointError, ImageError


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="mcssl: %(message)s")
    args = build_parser().parse_args(argv)
    errors = _user_errors()
    try:
        return args.fn(args)
    except errors as e:
        from mcssl.config import ConfigError

        rank = os.environ.get("RANK")
        prefix = f"[rank {rank}] " if rank not in (None, "0") else ""
        print(f"mcssl {args.command}: error: {prefix}{e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    except KeyboardInterrupt:
        print(f"mcssl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
