"""``asymmetry cache``: what the cache folder holds, and pruning what can be made again."""

from __future__ import annotations

import argparse
import json

from asymmetry import defaults
from asymmetry.experts import cache as model_cache
from asymmetry.experts.base import models_dir

KIND_NOTES = {
    "gguf": "GGUF joined from its packages, in use; joined again in seconds",
    "gguf-folder": "a GGUF's config and tokenizer",
    "conversion": "dequantised safetensors copy, prunable: converted again when a load needs it",
    "temporary": "left by a killed write, prunable after an hour",
    "other": "not ours: never touched",
}


def register(sub) -> None:
    p = sub.add_parser(
        "cache",
        help="list what the cache folder holds; --prune removes what can be made again",
        description="List the model cache (<ASYMMETRY_HOME>/models) entry by entry with its kind and size, and the "
        "size of the built indexes. --prune removes the dequantised safetensors conversions of GGUF models "
        "(<name>-float32, -bfloat16, -float16; earlier versions wrote one on every CPU load) and what killed writes "
        "left behind. A load that still needs a conversion makes it again: device_map and bitsandbytes "
        "placements, and a GGUF with block types the fast reader cannot size (the 0.5B's Q5_0). "
        "Indexes, GGUF files and anything not made by asymmetry are never touched.",
    )
    p.add_argument("--prune", action="store_true", help="remove conversions and leftovers of killed writes")
    p.add_argument("--dry-run", action="store_true", help="with --prune: say what would be removed, remove nothing")
    p.add_argument("--json", action="store_true", help='print {"home", "models": [{path, kind, bytes, modified}], '
                   '"indexes_bytes", "removed": [...]}')
    p.set_defaults(func=cmd_cache)


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def cmd_cache(args: argparse.Namespace) -> int:
    home = defaults.home()
    folder = models_dir()
    removed = model_cache.prune(folder, dry_run=args.dry_run) if args.prune else []
    gone = {e.path for e in removed} if not args.dry_run else set()
    listed = [e for e in model_cache.entries(folder) if e.path not in gone]
    indexes = home / "indexes"
    indexes_bytes = model_cache.size_of(indexes) if indexes.is_dir() else 0
    if args.json:
        print(json.dumps({"home": str(home), "models": [e.to_dict() for e in listed], "indexes_bytes": indexes_bytes,
                          "removed": [e.to_dict() for e in removed], "dry_run": bool(args.dry_run)}))
        return 0
    print(f"{home}")
    for e in listed:
        print(f"  {_gb(e.bytes):>9}  models/{e.path.rsplit('/', 1)[-1]}  ({KIND_NOTES[e.kind]})")
    print(f"  {_gb(indexes_bytes):>9}  indexes/")
    if args.prune:
        verb = "would remove" if args.dry_run else "removed"
        freed = sum(e.bytes for e in removed)
        print(f"{verb} {len(removed)} entr{'y' if len(removed) == 1 else 'ies'}, {_gb(freed)}"
              + "".join(f"\n  {e.path}" for e in removed))
    else:
        spare = [e for e in listed if model_cache.prunable(e)]
        if spare:
            print(f"asymmetry cache --prune would free {_gb(sum(e.bytes for e in spare))}")
    return 0
