"""Download the official Fair DARTS checkpoints listed in best_model/manifest.yaml and check them.

    python scripts/download_best_models.py [FILE ...] [--dest best_model] [--force]

Each file is fetched from the manifest's source folder (GitHub raw form of the folder URL),
written atomically, then loaded (weights_only) strictly into the network of its entry.
"""
from __future__ import annotations

import hashlib
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairdarts.errors import CLIParser, UserError, run_cli  # noqa: E402
from fairdarts.evaluation.evaluator import MANIFEST, load_model  # noqa: E402
from fairdarts.run_dir import atomic_write_bytes  # noqa: E402

TIMEOUT_S = 60


def raw_url(source: str, name: str) -> str:
    """``https://github.com/o/r/tree/b/dir`` -> ``https://github.com/o/r/raw/b/dir/name``."""
    if "/tree/" not in source:
        raise UserError(f"manifest source {source!r} is not a GitHub folder URL (.../tree/<branch>/<dir>)")
    return source.replace("/tree/", "/raw/", 1).rstrip("/") + "/" + name


def fetch(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        raise UserError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"cannot download {url}: {reason} (offline? fetch the file by hand into best_model/)") from None


def check(path: Path, entry: dict) -> str:
    """Load strictly into the manifest's network; a one-line description of what was checked."""
    loaded = load_model(path, manifest={path.name: entry})
    params = sum(p.numel() for p in loaded.model.parameters())
    return (f"{path.name}: loads strictly into {entry['arch']} ({loaded.meta['init_channels']} ch, "
            f"{loaded.meta['layers']} layers, auxiliary {loaded.meta['auxiliary']}), {params / 1e6:.3f}M params")


def main(argv: Sequence[str] | None = None) -> int:
    parser = CLIParser(prog="download_best_models.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", help="file names from the manifest (default: all)")
    parser.add_argument("--dest", default=str(MANIFEST.parent), help="folder to write into")
    parser.add_argument("--force", action="store_true", help="download again even when the file exists")
    args = parser.parse_args(argv)
    if not MANIFEST.is_file():
        raise UserError(f"{MANIFEST} is missing")
    doc = yaml.safe_load(MANIFEST.read_text())
    source, models = doc["source"], doc["models"]
    names = args.files or list(models)
    unknown = [n for n in names if n not in models]
    if unknown:
        raise UserError(f"not in the manifest: {', '.join(unknown)} (listed: {', '.join(models)})")
    for name in names:
        path = Path(args.dest) / name
        if args.force or not path.is_file():
            url = raw_url(source, name)
            print(f"downloading {url}")
            data = fetch(url)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data)
            print(f"{path}: {len(data) / 1e6:.1f} MB, sha256 {hashlib.sha256(data).hexdigest()} (manifest: unknown)")
        print(check(path, models[name]))
    return 0


if __name__ == "__main__":
    run_cli(main)
