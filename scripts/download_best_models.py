"""Download the official Fair DARTS checkpoints listed in fairdarts/best_models.yaml and check them.

    python scripts/download_best_models.py [FILE ...] [--dest best_model] [--force]

Each file is fetched from the manifest's source folder (GitHub raw form of the folder URL) into
a temporary file beside its destination, loaded (weights_only) strictly into the network of its
entry, and only then renamed into place: ``--force`` never replaces a good file with a bad one.
"""
from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairdarts.errors import CLIParser, UserError, run_cli  # noqa: E402
from fairdarts.evaluation.evaluator import MANIFEST, load_model  # noqa: E402
from fairdarts.run_dir import atomic_write_bytes  # noqa: E402
from fairdarts.safe_io import load_yaml, read_text_limited  # noqa: E402

TIMEOUT_S = 60
DEST = Path(__file__).resolve().parents[1] / "best_model"


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


def check(path: Path, entry: dict, name: str | None = None) -> str:
    """Load strictly into the manifest's network; a one-line description of what was checked.
    ``name`` is the manifest's file name when ``path`` is a temporary download."""
    name = name or path.name
    loaded = load_model(path, manifest={path.name: entry})
    params = sum(p.numel() for p in loaded.model.parameters())
    return (f"{name}: loads strictly into {entry['arch']} ({loaded.meta['init_channels']} ch, "
            f"{loaded.meta['layers']} layers, auxiliary {loaded.meta['auxiliary']}), {params / 1e6:.3f}M params")


def download_verified(url: str, path: Path, entry: dict, fetch_bytes=None) -> str:
    """Fetch ``url`` into a temporary file beside ``path``, check it loads into its network, and
    only then rename it onto ``path``: a failed or wrong download leaves the old file as it was."""
    data = (fetch_bytes or fetch)(url)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {path.parent}: {exc.strerror or exc}") from None
    tmp = path.with_name(f".{path.name}.download-{os.getpid()}")
    try:
        atomic_write_bytes(tmp, data)
        try:
            checked = check(tmp, entry, path.name)
        except UserError as exc:
            kept = f"; the existing {path} is kept" if path.is_file() else ""
            raise UserError(f"the download of {path.name} is not a valid checkpoint ({exc}){kept}") from None
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"{path}: {len(data) / 1e6:.1f} MB, sha256 {hashlib.sha256(data).hexdigest()} (manifest: unknown)")
    return checked


def main(argv: Sequence[str] | None = None) -> int:
    parser = CLIParser(prog="download_best_models.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", help="file names from the manifest (default: all)")
    parser.add_argument("--dest", default=str(DEST), help="folder to write into")
    parser.add_argument("--force", action="store_true", help="download again even when the file exists")
    args = parser.parse_args(argv)
    if not MANIFEST.is_file():
        raise UserError(f"{MANIFEST} is missing")
    doc = load_yaml(read_text_limited(MANIFEST, "manifest"))
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict) or "source" not in doc:
        raise UserError(f"{MANIFEST}: expected 'source:' and a 'models:' mapping")
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
            print(download_verified(url, path, models[name]))
        else:
            print(check(path, models[name]))
    return 0


if __name__ == "__main__":
    run_cli(main)
