"""Where inputs live: local paths and globs, or URLs (`s3://`, `gs://`, `hf://`, ...) read through fsspec.

Remote files are opened as streams (ranged reads of a few MB at a time), never downloaded whole. Every
input file has an identity recorded in the manifests so a rerun knows when it changed:

    local   {"path", "size", "sha256"}             sha256 of the bytes as stored
    remote  {"path", "size", "etag" | "version"}   what the store says about the object (no read)

A store that gives neither (rare) is hashed by streaming the object once.
"""

from __future__ import annotations

import glob as _glob
import hashlib
import os
import re
from pathlib import Path
from typing import IO, Any

from packer.core.errors import InputError
from packer.core.manifest import sha256_file

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_MAGIC = set("*?[")
BLOCK = 8 * 2**20  # remote read size: large enough that a 100 MB object is ~13 requests
# fsspec stores and the extra that installs each (an unknown protocol says which package is missing)
EXTRAS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "hf": "huggingface_hub",
          "az": "adlfs", "abfs": "adlfs", "http": "aiohttp", "https": "aiohttp"}


def is_url(path: str) -> bool:
    """True for `scheme://...` (except file://, which is a local path)."""
    m = _URL.match(str(path))
    return bool(m) and m.group(1).lower() != "file"


def local_path(path: str) -> str:
    return str(path)[len("file://"):] if str(path).startswith("file://") else str(path)


S3_RANGE_CONNECTIONS = 64
"""Connections a range reader keeps open to an S3 store (botocore's default is 10). A round of range requests
goes out together, and on a store whose round trip is long the connections, not the read-ahead window, set the
rate: 10 connections at 50 ms a request are 200 requests a second, a 20 ms step of 6 packs asks 600."""


def filesystem(url: str, *, connections: int | None = None) -> tuple[Any, str]:
    """The fsspec filesystem and in-store path of a URL; an error naming the package to install.

    connections: for s3:// URLs, botocore's max_pool_connections, unless the fsspec configuration (or the
    FSSPEC_S3_* environment) already sets it: the user's setting wins."""
    try:
        import fsspec
    except ImportError:
        raise InputError(url, None, None, "is a URL, and reading URLs needs fsspec",
                         "pip install 'packer[remote]'") from None
    protocol = _URL.match(url).group(1).lower()  # type: ignore[union-attr]
    if protocol == "hf":
        hf_parts(url)  # a malformed hf:// URL is named here, not by a network error later
    kwargs = {}
    if connections is not None and protocol in ("s3", "s3a"):
        configured: dict = {}
        for key in ("s3", "s3a"):  # what fsspec's apply_config gives s3fs: the last key's config_kwargs
            if "config_kwargs" in fsspec.config.conf.get(key, {}):
                configured = dict(fsspec.config.conf[key]["config_kwargs"] or {})
        if "max_pool_connections" not in configured:
            kwargs["config_kwargs"] = {**configured, "max_pool_connections": connections}
    try:
        return fsspec.core.url_to_fs(url, **kwargs)
    except (ImportError, ValueError) as e:
        pkg = EXTRAS.get(protocol)
        raise InputError(url, None, None, f"cannot open {protocol}:// URLs ({_why(e)})",
                         f"pip install {pkg}" if pkg else "use a local path or an s3://, gs:// or hf:// URL") from None


def hf_parts(url: str) -> dict[str, str]:
    """Split an `hf://` URL into repo type, repo id, revision and path in the repo.

    hf://datasets/openai/gsm8k@main/main/train-00000-of-00001.parquet
        -> {"repo_type": "dataset", "repo_id": "openai/gsm8k", "revision": "main",
            "path": "main/train-00000-of-00001.parquet"}
    Models (hf://org/name/...) and spaces (hf://spaces/...) likewise. Revisions with a slash are
    written URL-quoted (refs%2Fpr%2F1), as huggingface_hub expects.
    """
    m = re.match(r"^hf://(?:(datasets|spaces)/)?([^/@]+)/([^/@]+)(?:@([^/]+))?(?:/(.*))?$", url)
    if not m:
        raise InputError(url, None, None, "is not an hf:// URL of the form hf://datasets/ORG/NAME[@REV]/PATH",
                         "write it as hf://datasets/ORG/NAME/PATH (models: hf://ORG/NAME/PATH)")
    kind, org, name, rev, path = m.groups()
    repo_type = {"datasets": "dataset", "spaces": "space", None: "model"}[kind]
    from urllib.parse import unquote

    return {"repo_type": repo_type, "repo_id": f"{org}/{name}", "revision": unquote(rev) if rev else "main",
            "path": path or ""}


def expand(path: str) -> list[str]:
    """The files a path names: itself, a glob's matches (sorted), or a folder's data files (sorted).

    A glob or folder that matches nothing is an error, never an empty input.
    """
    path = str(path)
    if is_url(path):
        fs, inner = filesystem(path)
        fs.invalidate_cache()  # a listing cached earlier in this process must not hide a changed store
        protocol = _URL.match(path).group(1)  # type: ignore[union-attr]
        try:
            if any(c in _MAGIC for c in inner):
                found = sorted(fs.glob(inner))
            elif fs.isdir(inner):
                found = sorted(p for p in fs.find(inner) if _is_data_file(p))
            else:
                return [path]
        except Exception as e:
            raise unreachable(path, e) from None
        if not found:
            root = inner[:min(inner.find(c) for c in _MAGIC if c in inner)].rsplit("/", 1)[0] if \
                any(c in _MAGIC for c in inner) else inner
            try:
                there = fs.exists(root)
            except Exception as e:
                raise unreachable(path, e) from None
            if not there:  # a missing bucket or folder is not the same as a pattern that matches nothing
                raise unreachable(path, FileNotFoundError(f"{protocol}://{root} does not exist"))
            raise InputError(path, None, None, "matches no files", "check the pattern and the bucket")
        return [f"{protocol}://{p.split('://', 1)[-1]}" for p in found]
    path = local_path(path)
    if any(c in _MAGIC for c in path):
        found = sorted(p for p in _glob.glob(path, recursive=True) if os.path.isfile(p))
        if not found:
            raise InputError(path, None, None, "matches no files", "check the pattern (quote it so the shell "
                             "passes it to packer)")
        return found
    p = Path(path)
    if p.is_dir() and not is_table_folder(p):
        found = sorted(str(f) for f in p.rglob("*") if f.is_file() and _is_data_file(f.name))
        if not found:
            raise InputError(path, None, None, "is a folder with no .parquet, .arrow or .jsonl files",
                             "pass the data files, or a glob such as 'folder/*.parquet'")
        return found
    return [path]


def _is_data_file(name: str) -> bool:
    name = str(name).lower()
    return name.endswith((".parquet", ".arrow", ".feather", ".jsonl", ".jsonl.gz", ".jsonl.zst", ".json"))


def is_table_folder(p: Path) -> bool:
    """A `datasets` save_to_disk folder (state.json beside data-*.arrow) or a DatasetDict of them."""
    return (p / "state.json").is_file() or (p / "dataset_dict.json").is_file()


def identity(path: str) -> dict:
    """What identifies an input's content: size plus sha256 (local) or ETag / version (remote).

    Raises InputError before any work when the file is missing or the store cannot be reached.
    """
    if not is_url(path):
        p = Path(local_path(path))
        if p.is_dir() and is_table_folder(p):
            files = sorted(f for f in p.iterdir() if f.is_file())
            h = hashlib.sha256()
            for f in files:
                h.update(f.name.encode() + b"\0" + sha256_file(f).encode() + b"\0")
            return {"path": str(path), "size": sum(f.stat().st_size for f in files), "sha256": h.hexdigest()}
        if not p.is_file():
            raise InputError(str(path), None, None, "no such file", "check the path given as DATA")
        return {"path": str(path), "size": p.stat().st_size, "sha256": sha256_file(p)}
    fs, inner = filesystem(path)
    fs.invalidate_cache(inner)
    try:
        info = fs.info(inner)
    except Exception as e:
        raise unreachable(path, e) from None
    if info.get("type") == "directory":
        raise InputError(path, None, None, "is a folder", "pass its files or a glob such as PATH/*.parquet")
    out = {"path": path, "size": int(info.get("size") or 0)}
    for key, name in (("VersionId", "version"), ("ETag", "etag"), ("generation", "version"),
                      ("md5Hash", "etag"), ("blob_id", "etag")):
        if info.get(key):
            out[name] = str(info[key]).strip('"')
    lfs = info.get("lfs")
    if isinstance(lfs, dict) and lfs.get("sha256"):
        out["sha256"] = lfs["sha256"]
    if not ({"etag", "version", "sha256"} & set(out)):  # the store names no version: hash the bytes once
        h = hashlib.sha256()
        with fs.open(inner, "rb", block_size=BLOCK) as f:
            for block in iter(lambda: f.read(BLOCK), b""):
                h.update(block)
        out["sha256"] = h.hexdigest()
    return out


def size_of(path: str) -> int:
    """A file's size in bytes (local or remote)."""
    if not is_url(path):
        return Path(local_path(path)).stat().st_size
    fs, inner = filesystem(path)
    try:
        return int(fs.info(inner).get("size") or 0)
    except Exception as e:
        raise unreachable(path, e) from None


def open_input(path: str) -> IO[bytes]:
    """A binary file object: local, or a remote stream read in BLOCK-sized ranges."""
    if not is_url(path):
        p = Path(local_path(path))
        if not p.is_file():
            raise InputError(str(path), None, None, "no such file", "check the path given as DATA")
        return open(p, "rb")
    fs, inner = filesystem(path)
    try:
        return fs.open(inner, "rb", block_size=BLOCK)
    except Exception as e:
        raise unreachable(path, e) from None


def unreachable(url: str, e: BaseException) -> InputError:
    """An error naming the URL, what was tried (endpoint, credentials) and the store's answer."""
    protocol = _URL.match(url).group(1).lower() if _URL.match(url) else ""  # type: ignore[union-attr]
    tried = ""
    if protocol in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS default"
        creds = "AWS_ACCESS_KEY_ID" if os.environ.get("AWS_ACCESS_KEY_ID") else "the default credential chain"
        tried = f" (tried endpoint {endpoint} with credentials from {creds})"
    elif protocol == "hf":
        tried = " (tried the Hugging Face Hub" + (", HF_HUB_OFFLINE is set" if os.environ.get("HF_HUB_OFFLINE")
                                                   else "") + ")"
    elif protocol in ("gs", "gcs"):
        tried = " (tried Google Cloud Storage with the default credentials)"
    kind = "not found" if isinstance(e, FileNotFoundError) else \
        "not authorised" if isinstance(e, PermissionError) else "unreachable"
    hint = {"hf": "check the repo id, the revision and the network; private or gated datasets need HF_TOKEN",
            "s3": "check the URL, the endpoint (AWS_ENDPOINT_URL) and the credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE)",
            }.get(protocol.rstrip("a"), "check the URL, the network and the credentials")
    return InputError(url, None, None, f"{kind}{tried}: {_why(e)}", hint)


def _why(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]
