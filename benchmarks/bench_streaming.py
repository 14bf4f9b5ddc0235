#!/usr/bin/env python
"""Streaming-loader benchmark: MosaicML streaming vs LitData vs Packer over one local S3 (moto) store.

Every library reads the SAME packed data (N packs of SEQ uint16 tokens + a uint8 loss mask, numpy RNG seed 0)
from the SAME moto server (ThreadedMotoServer on 127.0.0.1, random port). Each rank is its own OS process with
its own cold cache and its own counting reverse proxy in front of moto, so "bytes fetched" is per rank. moto and
every proxy run in processes of their own (one interpreter lock for all of them capped the store at one core);
--latency-ms makes each proxy wait that long before each response, as an object store's time to first byte.

The store's capacity is measured first: WA client processes, each through its own proxy, making range GETs of
one pack's tokens with s3fs (requests a second, all together). It is printed beside the request rate Packer's
default order asks at the configured step (WA x BA packs a step, two requests a pack): where the demand is above
the capacity, no reader can keep the wait at local prefetch's, and the wait measures the store.

Each rank process runs in its own mount namespace (`unshare --mount`, needs root): a private /dev/shm and its
own cache folder bind-mounted over one common path. That is what separate machines look like: MosaicML
streaming registers its shared memory per node in /dev/shm (4 "nodes" on one host would collide there), and
LitData's resume state records the cache path, which must then be the same on every rank.

Measured per library:
  phase A (world size WA, per-rank batch BA, cold caches, all ranks released at once):
    * time to first batch of rank 0 (construct dataset/loader + first next());
    * bytes / requests each rank fetched from the store by the time it has read 10% of its epoch share,
      against the bytes of the samples it read (ratio; in brackets with metadata left out, as the goal counts:
      index / manifest objects, and Packer's shard heads, a range from byte 0), and over its whole epoch;
    * steady-state wait per batch: time next() blocks, batches WARMUP+1 .. WARMUP+STEADY, with a fake
      compute step (sleep SLEEP s) between batches: p50, p90, mean (the time lost per batch) and max;
    * a resume state saved after K batches (and the pack ids each rank had read by then);
    * the rest of the epoch without sleeps: coverage of an uninterrupted epoch (missing / duplicate ids).
  phase B (world size WB, per-rank batch BB, fresh cold caches): load rank 0's phase-A state, read to the end
    of the epoch; missing / duplicate pack ids of the epoch over (phase-A first K batches + phase B).
  Defaults keep the global batch fixed (4 x 6 = 3 x 8 = 24), as elastic training does.
  packer-blocks: Packer with shuffle_blocks=BLOCKS (runs of neighbouring packs: a batch in two requests a shard).
  packer-local: the same Packer run read from local disk with the same loader settings, the baseline for the
  streamed run's wait per batch ("no longer than today's local prefetch"); it fetches nothing.

Install the other libraries without their dependencies (their pins would replace this project's torch and
numpy): pip install --no-deps mosaicml-streaming==0.13.0 litdata==0.2.76 (tested versions), then whatever
light packages they still import. A library that cannot be imported gets an error row; the others still run.

Usage:  python bench_streaming.py [--only streaming,litdata,packer] [--n 2016] ...
        (runs as: the orchestrator, or --worker CFG.json inside each rank process)
"""

from __future__ import annotations

import argparse
import collections
import http.client
import itertools
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import traceback
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

BUCKET = "bucket"
HERE = os.path.abspath(__file__)
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
LIBS = ("streaming", "litdata", "litdata-boto3", "packer", "packer-blocks", "packer-local")


# ---------------------------------------------------------------------------------------------- data

def make_data(n: int, seq: int) -> tuple[np.ndarray, np.ndarray]:
    """N packs: tokens uint16 [n, seq] and loss mask uint8 [n, seq]; deterministic."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50_000, size=(n, seq), dtype=np.uint16)
    mask = (rng.random((n, seq)) < 0.7).astype(np.uint8)
    return tokens, mask


def payload_bytes(seq: int) -> int:
    """Bytes of one pack's content (tokens + mask): what 'bytes of samples read' counts, for every library."""
    return seq * 2 + seq


def write_mds(out: str, tokens: np.ndarray, mask: np.ndarray, shard_bytes: int) -> None:
    import_streaming()
    from streaming import MDSWriter
    cols = {"tokens": "bytes", "mask": "bytes", "pack_id": "int64"}
    with MDSWriter(out=out, columns=cols, size_limit=shard_bytes, compression=None) as w:
        for i in range(len(tokens)):
            w.write({"tokens": tokens[i].tobytes(), "mask": mask[i].tobytes(), "pack_id": i})


def write_litdata(out: str, tokens: np.ndarray, mask: np.ndarray, shard_bytes: int) -> None:
    from litdata.streaming.writer import BinaryWriter
    w = BinaryWriter(out, chunk_bytes=shard_bytes)
    for i in range(len(tokens)):
        w[i] = {"tokens": tokens[i].tobytes(), "mask": mask[i].tobytes(), "pack_id": i}
    w.done()
    w.merge(num_workers=1)


def make_packer_run(tmpdir: str, tokens: np.ndarray | None = None, mask: np.ndarray | None = None) -> str:
    """The same packs as a Packer run: each pack one example of SEQ tokens (pack_len SEQ), loss where the mask
    says (the example's first token is never a target, as in every packed example), shards of about the size
    the other libraries' shards have. Returns the local run folder (uploaded with shards/manifest.json last)."""
    from packer import pack_dataset

    if tokens is None:
        tokens, mask = make_data(*_SHAPE)
    examples = [{"input_ids": t.tolist(), "labels": np.where(m == 1, t.astype(np.int64), -100).tolist()}
                for t, m in zip(tokens, mask)]
    run = os.path.join(tmpdir, "packer_run")
    pack_dataset(examples, tokens.shape[1], out=run, vocab_size=50_000, algorithm="ffd",
                 shard_bytes=_SHARD_BYTES[0])
    for stage in ("tokenized", "plan"):  # only the products are published (as `packer pack --out URL` does)
        shutil.rmtree(os.path.join(run, stage), ignore_errors=True)
    return run


_SHAPE = [2016, 4096]
_SHARD_BYTES = [1 << 20]


def packer_num_packs(run_dir: str, default: int) -> int:
    try:
        from packer import PackedShards
        return len(PackedShards(run_dir))
    except Exception:
        return default


def upload_folder(s3, local: str, prefix: str, last: tuple[str, ...] = ()) -> int:
    """Upload every file under local to s3://BUCKET/prefix/<relpath>; the relpaths in `last` go last."""
    files = []
    for root, _, names in os.walk(local):
        for name in names:
            full = os.path.join(root, name)
            files.append(os.path.relpath(full, local).replace(os.sep, "/"))
    files.sort(key=lambda rel: (rel in last, last.index(rel) if rel in last else 0, rel))
    total = 0
    for rel in files:
        s3.upload_file(os.path.join(local, rel), BUCKET, f"{prefix}/{rel}")
        total += os.path.getsize(os.path.join(local, rel))
    return total


# ------------------------------------------------------------------------------ counting reverse proxy

_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
        "proxy-authenticate", "proxy-authorization"}


class CountingProxy:
    """HTTP/1.1 reverse proxy to moto counting response body bytes and requests; GET /__stats__ reads them."""

    def __init__(self, upstream: tuple[str, int], latency: float = 0.0):
        self.upstream = upstream
        self.latency = latency  # seconds added before each response: an object store's time to first byte
        self.lock = threading.Lock()
        self.bytes = 0
        self.meta_bytes = 0  # index / manifest objects and Packer's shard heads (a range from byte 0 of a shard)
        self.requests = 0
        self.by_method: dict[str, int] = collections.Counter()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _upstream(self, fresh: bool = False) -> http.client.HTTPConnection:
                conn = getattr(self, "_conn", None)
                if conn is None or fresh:
                    if conn is not None:
                        conn.close()
                    conn = self._conn = http.client.HTTPConnection(*proxy.upstream, timeout=120)
                return conn

            def _read_request_body(self) -> bytes | None:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    parts = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            break
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                    return b"".join(parts)
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else None

            def _handle(self):
                if self.path == "/__stats__":
                    data = json.dumps(proxy.stats()).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                body = self._read_request_body()
                if proxy.latency:
                    time.sleep(proxy.latency)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                if body is not None:
                    headers["Content-Length"] = str(len(body))
                    headers.pop("content-length", None)
                for attempt in (0, 1):
                    try:
                        conn = self._upstream(fresh=attempt == 1)
                        conn.request(self.command, self.path, body=body, headers=headers)
                        resp = conn.getresponse()
                        data = resp.read()
                        break
                    except (http.client.HTTPException, OSError):
                        if attempt:
                            raise
                self.send_response_only(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() in _HOP or (k.lower() == "content-length" and self.command != "HEAD"):
                        continue
                    self.send_header(k, v)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD" and data:
                    self.wfile.write(data)
                with proxy.lock:
                    proxy.requests += 1
                    proxy.by_method[self.command] += 1
                    if self.command != "HEAD":
                        proxy.bytes += len(data)
                        path = self.path.split("?")[0]
                        if self.command == "GET" and (path.endswith(".json") or (
                                f"/{BUCKET}/run/shards/" in path and self.headers.get("Range", "").startswith("bytes=0-"))):
                            proxy.meta_bytes += len(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            # socketserver's default listen backlog is 5: a client opening a dozen connections at once (s3fs's
            # concurrent range requests) had SYNs dropped and retried a second later (TCP's initial timeout)
            request_queue_size = 1024

            def handle_error(self, request, client_address):  # a client closing its connection is no news
                if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
                    super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict:
        with self.lock:
            return {"bytes": self.bytes, "meta_bytes": self.meta_bytes, "requests": self.requests,
                    "by_method": dict(self.by_method)}



def serve(kind: str, arg: str, port_file: str) -> None:
    """A store-side process (--serve): 'moto' (the S3 server) or 'proxy' (a CountingProxy to moto at arg =
    'HOST:PORT[:LATENCY_S]'); writes its port to port_file, then serves until killed. Each runs in a process of
    its own, so the store side is not one interpreter lock shared by moto and every rank's proxy (that capped
    the store at one core while the ranks shared the other, which no object store does)."""
    if kind == "moto":
        import logging
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        from moto.server import ThreadedMotoServer
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        port = server.get_host_and_port()[1]
    else:
        host, up, *lat = arg.split(":")
        port = CountingProxy((host, int(up)), float(lat[0]) if lat else 0.0).port
    with open(port_file + ".tmp", "w") as f:
        f.write(str(port))
    os.replace(port_file + ".tmp", port_file)
    while True:
        time.sleep(3600)


class Served:
    """A --serve process started by the orchestrator: its port, and stop()."""

    def __init__(self, kind: str, arg: str, workdir: str):
        port_file = os.path.join(workdir, f"{kind}-{next(_served)}.port")
        self.proc = subprocess.Popen([sys.executable, HERE, "--serve", kind, arg, port_file], env=dict(os.environ, **AWS_ENV),
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 60
        while not os.path.exists(port_file):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the {kind} process did not start (exit code {self.proc.poll()})")
            time.sleep(0.02)
        self.port = int(open(port_file).read())
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
        self.proc.wait()


_served = itertools.count()


def probe(endpoint: str, key: str, size: int, nbytes: int, n: int, seed: int, out: str) -> None:
    """--probe: n range GETs of nbytes at random offsets of key, 48 at a time with s3fs (the client Packer's
    ranks use); writes {start, end, cpu} (wall clock) to out."""
    import fsspec
    fs = fsspec.filesystem("s3", client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)
    starts = np.random.default_rng(seed).integers(0, max(1, size - nbytes), n).tolist()
    path = f"{BUCKET}/{key}"
    fs.cat_ranges([path] * 8, starts[:8], [x + nbytes for x in starts[:8]])  # connections opened
    t0, c = time.time(), time.process_time()
    for i in range(0, n, 48):
        part = starts[i:i + 48]
        fs.cat_ranges([path] * len(part), part, [x + nbytes for x in part])
    with open(out, "w") as f:
        json.dump({"start": t0, "end": time.time(), "cpu": time.process_time() - c}, f)


def store_capacity(moto_port: int, workdir: str, key: str, size: int, nbytes: int, clients: int,
                   n: int = 240) -> dict:
    """The store's request rate: `clients` processes, each through a proxy of its own (no added latency), as
    the ranks read, each making n range GETs of nbytes. Requests a second from the first client's start to
    the last client's end; a loader's demand above it is more than any client can get from this store."""
    proxies = [Served("proxy", f"127.0.0.1:{moto_port}", workdir) for _ in range(clients)]
    outs = [os.path.join(workdir, f"probe-{i}.json") for i in range(clients)]
    try:
        procs = [subprocess.Popen([sys.executable, HERE, "--probe", px.url, key, str(size), str(nbytes), str(n),
                                   str(i), out], env=dict(os.environ, **AWS_ENV), stdin=subprocess.DEVNULL)
                 for i, (px, out) in enumerate(zip(proxies, outs))]
        for pr in procs:
            pr.wait(timeout=300)
        got = [json.load(open(o)) for o in outs]
    finally:
        for px in proxies:
            px.stop()
    wall = max(g["end"] for g in got) - min(g["start"] for g in got)
    return {"requests_per_s": clients * n / wall, "clients": clients, "range_bytes": nbytes,
            "client_cpu_ms_per_request": sum(g["cpu"] for g in got) / (clients * n) * 1e3}


def proxy_stats(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/__stats__")
    out = json.loads(conn.getresponse().read())
    conn.close()
    return out


# ------------------------------------------------------------------------------------ library sides

def import_streaming():
    """streaming/__init__ imports its vision/text/multimodal datasets (torchvision, transformers<5); the
    benchmark needs neither, so those three subpackages are stubbed before the import."""
    for m in ("streaming.vision", "streaming.text", "streaming.multimodal"):
        sys.modules.setdefault(m, types.ModuleType(m))
    import streaming
    return streaming


def collate_bytes(samples: list[dict]) -> dict:
    """streaming / litdata samples (tokens bytes, mask bytes, pack_id) -> a batch of tensors."""
    import torch
    tok = np.stack([np.frombuffer(s["tokens"], np.uint16) for s in samples]).astype(np.int32)
    msk = np.stack([np.frombuffer(s["mask"], np.uint8) for s in samples])
    return {"pack_index": torch.tensor([int(s["pack_id"]) for s in samples], dtype=torch.int64),
            "input_ids": torch.from_numpy(tok), "loss_mask": torch.from_numpy(msk).bool()}


class StreamingSide:
    """MosaicML streaming: StreamingDataset(remote=s3://bucket/mds, local=<rank cache>) + StreamingDataLoader.
    Endpoint: S3_ENDPOINT_URL env var (streaming's S3Downloader passes it to boto3). Rank/world from env
    RANK, WORLD_SIZE, LOCAL_RANK=0, LOCAL_WORLD_SIZE=1 (each rank its own node); WORLD_SIZE > 1 makes the
    dataset init a gloo process group itself (MASTER_ADDR/MASTER_PORT) for its barriers."""

    def __init__(self, c: dict):
        self.c = c

    def build(self):
        streaming = import_streaming()
        c = self.c
        self.ds = streaming.StreamingDataset(
            remote=f"s3://{BUCKET}/mds", local=os.path.join(c["cache_dir"], "mds"), batch_size=c["bs"],
            shuffle=True, shuffle_seed=c["seed"], cache_limit=c["cache_limit"] or None)
        self.dl = streaming.StreamingDataLoader(self.ds, batch_size=c["bs"], num_workers=0, collate_fn=collate_bytes)
        return self.dl

    def state(self):
        # rank 0's call is the checkpoint: sample_in_epoch = num_samples_yielded * world (from_beginning=False)
        return self.dl.state_dict()

    def load(self, state):
        self.dl.load_state_dict(state)


class LitdataSide:
    """LitData: litdata.StreamingDataset('s3://bucket/lit', cache_dir=<rank cache>) + StreamingDataLoader.
    Endpoint: storage_options={'endpoint_url': ...} (spread into boto3 session.client('s3', ...)); chunk GETs
    go through obstore, which takes the endpoint from that boto3 client. obstore refuses http:// endpoints
    (reqwest BadScheme), so its client options get allow_http=True; backend 'boto3' turns obstore off
    (litdata.streaming.downloader._OBSTORE_AVAILABLE = False) so boto3 download_file is used. s5cmd is not
    used by this litdata version. Rank/world from env WORLD_SIZE, GLOBAL_RANK, NNODES."""

    def __init__(self, c: dict):
        self.c = c

    def build(self):
        import litdata
        import litdata.streaming.downloader as dl_mod
        c = self.c
        if c["lib"] == "litdata-boto3":
            dl_mod._OBSTORE_AVAILABLE = False
        else:
            dl_mod._OBSTORE_CLIENT_OPTIONS = dict(dl_mod._OBSTORE_CLIENT_OPTIONS, allow_http=True)
        self.ds = litdata.StreamingDataset(
            f"s3://{BUCKET}/lit", cache_dir=os.path.join(c["cache_dir"], "lit"), shuffle=True, seed=c["seed"],
            storage_options={"endpoint_url": c["endpoint"]}, max_cache_size=c["cache_limit"] or None)
        self.dl = litdata.StreamingDataLoader(self.ds, batch_size=c["bs"], num_workers=0, collate_fn=collate_bytes)
        return self.dl

    def state(self):
        return self.dl.state_dict()

    def load(self, state):
        self.dl.load_state_dict(state)


def packer_side(url: str, batch_size: int, rank: int, world_size: int, seed: int, cache_limit: int,
                prefetch: int = 2, shuffle_blocks: int = 0, read_ahead: int = 4):
    """Packer: PackedLoader over the run at `url` (AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 point at this
    rank's proxy; PACKER_CACHE / XDG_CACHE_HOME at this rank's cold cache). Iterating yields dict batches
    with 'pack_index' (int64 tensor of pack ids); state_dict()/load_state_dict(state) with any world size."""
    from packer import PackedLoader
    return PackedLoader(url, batch_size, rank=rank, world_size=world_size, seed=seed, cache_limit=cache_limit or None,
                        prefetch=prefetch, shuffle_blocks=shuffle_blocks, read_ahead=read_ahead)


class PackerSide:
    def __init__(self, c: dict):
        self.c = c

    def build(self):
        c = self.c
        # packer-local: the same run read from this machine's disk (today's local prefetch: the baseline for
        # the streamed run's wait per batch)
        url = c["local"] if c["lib"] == "packer-local" else f"s3://{BUCKET}/run"
        self.loader = packer_side(url, c["bs"], c["rank"], c["world"], c["seed"],
                                  c["cache_limit"], prefetch=2,
                                  shuffle_blocks=c["blocks"] if c["lib"] == "packer-blocks" else 0,
                                  read_ahead=c["read_ahead"])
        return self.loader

    def state(self):
        return self.loader.state_dict()

    def load(self, state):
        self.loader.load_state_dict(state)


SIDES = {"streaming": StreamingSide, "litdata": LitdataSide, "litdata-boto3": LitdataSide, "packer": PackerSide,
         "packer-blocks": PackerSide, "packer-local": PackerSide}


# ------------------------------------------------------------------------------------------ worker

def batch_ids(batch) -> list[int]:
    ids = batch["pack_index"]
    ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    return [int(i) for i in ids if int(i) >= 0]


def worker_main(cfg_path: str) -> None:
    with open(cfg_path) as f:
        c = json.load(f)
    out: dict = {"rank": c["rank"], "lib": c["lib"], "mode": c["mode"]}
    try:
        import torch
        torch.set_num_threads(1)
        side = SIDES[c["lib"]](c)
        # imports happen before the start line, so that import time is not counted: the library and the S3
        # client it imports on first use (boto3 for streaming and litdata, obstore for litdata, s3fs for Packer)
        if c["lib"] == "streaming":
            import_streaming()
            import boto3  # noqa: F401
        elif c["lib"].startswith("litdata"):
            import litdata  # noqa: F401
            import boto3  # noqa: F401
            try:
                import obstore  # noqa: F401
            except ImportError:
                pass
        else:
            import packer.train.loader  # noqa: F401
            import s3fs  # noqa: F401
            if c.get("no_widen"):
                from packer.core.rangestore import RangeReader
                fixed = RangeReader.read_ahead

                def no_widen(self, batches, reserve, window=4):
                    return fixed(self, batches, reserve, window, widen_to=window)
                RangeReader.read_ahead = no_widen
        import faulthandler  # a rank still running near the phase timeout dumps its threads' stacks to its log
        faulthandler.dump_traceback_later(max(5.0, c["timeout"] - 15), exit=False)
        open(c["ready"], "w").close()
        while not os.path.exists(c["go"]):
            time.sleep(0.001)
        t0 = time.perf_counter()
        loader = side.build()
        if c["mode"] == "B":
            with open(c["state_in"]) as f:
                state = json.load(f)
            try:
                side.load(state)
            except Exception as e:
                out["resume_error"] = f"{type(e).__name__}: {e}"[:400]
                raise
        out["build_s"] = time.perf_counter() - t0
        it = iter(loader)
        first = next(it)
        out["ttfb"] = time.perf_counter() - t0
        ids = batch_ids(first)
        nb, waits, max_wait = 1, [], (0.0, 0)
        per_rank_epoch = c["n"] / c["world"]
        target10 = math.ceil(c["frac"] * per_rank_epoch)
        stats10 = None
        while True:
            if stats10 is None and len(ids) >= target10:
                stats10 = proxy_stats(c["proxy_port"])
                out["samples_at_frac"] = len(ids)
                ranges = getattr(getattr(loader, "dataset", None), "ranges", None)  # Packer, streamed
                if c["lib"].startswith("packer") and ranges is not None:
                    out["window_at_frac"] = ranges.stats()["read_ahead_window"]
                    # pack bytes its builder has read (the prefetched batches too), holds or is fetching for the
                    # coming batches
                    st = ranges.stats()
                    out["read_or_ahead_at_frac"] = st["bytes_of_packs_read"] + st["bytes_ahead"] + st["bytes_in_flight"]
            if c["mode"] == "A" and nb == c["k_save"]:
                state = side.state()
                out["state"] = state
                out["ids_at_k"] = list(ids)
            computing = c["mode"] == "A" and nb <= c["warmup"] + c["steady"]
            if computing:
                time.sleep(c["sleep"])
            t = time.perf_counter()
            try:
                b = next(it)
            except StopIteration:  # the end of the epoch can block too: count it as batch nb + 1
                max_wait = max(max_wait, (time.perf_counter() - t, nb + 1))
                break
            w = time.perf_counter() - t
            max_wait = max(max_wait, (w, nb + 1))
            if computing and nb >= c["warmup"]:
                waits.append(w)
            ids.extend(batch_ids(b))
            nb += 1
            if nb >= c["max_batches"]:
                out["capped"] = True
                break
        out["stats_at_frac"] = stats10
        out["stats_final"] = proxy_stats(c["proxy_port"])
        ranges = getattr(getattr(loader, "dataset", None), "ranges", None)
        if c["lib"].startswith("packer") and ranges is not None:
            out["reader_final"] = ranges.stats()
        out.update(ids=ids, batches=nb, waits=waits, elapsed=time.perf_counter() - t0,
                   max_wait_s=max_wait[0], max_wait_batch=max_wait[1])
    except BaseException as e:  # noqa: BLE001 - report anything, cleanly
        out["error"] = f"{type(e).__name__}: {e}"[:600]
        out["traceback"] = traceback.format_exc()[-3000:]
    with open(c["result"] + ".tmp", "w") as f:
        json.dump(out, f, default=str)
    os.replace(c["result"] + ".tmp", c["result"])
    # some libraries leave threads behind; leave at once
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# ------------------------------------------------------------------------------------ orchestrator

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_phase(a, lib: str, mode: str, world: int, bs: int, moto_addr, state: dict | None, tag: str) -> list[dict]:
    phase_dir = os.path.join(a.workdir, lib, tag)
    shutil.rmtree(phase_dir, ignore_errors=True)
    os.makedirs(phase_dir)
    mnt = os.path.join(a.workdir, "mnt_cache")  # every rank's cache appears here, in its own namespace
    os.makedirs(mnt, exist_ok=True)
    go = os.path.join(phase_dir, "go")
    state_in = None
    if state is not None:
        state_in = os.path.join(phase_dir, "state_in.json")
        with open(state_in, "w") as f:
            json.dump(state, f)
    master_port = free_port()
    proxies, procs, cfgs, logs = [], [], [], []
    try:
        for r in range(world):
            px = Served("proxy", f"{moto_addr[0]}:{moto_addr[1]}:{a.latency_ms / 1e3}", a.workdir)
            proxies.append(px)
            rdir = os.path.join(phase_dir, f"rank{r}")
            cache_src, tmp = os.path.join(rdir, "cache"), os.path.join(rdir, "tmp")
            os.makedirs(cache_src)
            os.makedirs(tmp)
            c = dict(lib=lib, mode=mode, rank=r, world=world, bs=bs, n=a.n_lib[lib], seed=0, frac=a.frac,
                     sleep=a.sleep, warmup=a.warmup, steady=a.steady, k_save=a.k,
                     max_batches=int(2 * a.n_lib[lib] / (world * bs)) + 10,
                     cache_dir=mnt, cache_limit=a.cache_limit, endpoint=px.url, proxy_port=px.port,
                     ready=os.path.join(rdir, "ready"), go=go, result=os.path.join(rdir, "result.json"),
                     state_in=state_in, timeout=a.timeout, local=getattr(a, "local_run", None), blocks=a.blocks,
                     read_ahead=a.read_ahead, no_widen=a.no_widen)
            cfg = os.path.join(rdir, "cfg.json")
            with open(cfg, "w") as f:
                json.dump(c, f)
            env = dict(os.environ, **AWS_ENV, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                       TMPDIR=tmp, AWS_ENDPOINT_URL=px.url, AWS_ENDPOINT_URL_S3=px.url, S3_ENDPOINT_URL=px.url,
                       PACKER_CACHE=os.path.join(mnt, "packer"), XDG_CACHE_HOME=os.path.join(mnt, "xdg"),
                       LITDATA_DISABLE_VERSION_CHECK="1", TOKENIZERS_PARALLELISM="false")
            for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GLOBAL_RANK", "NNODES", "NODE_RANK",
                      "MASTER_ADDR", "MASTER_PORT"):
                env.pop(k, None)
            if lib.startswith("packer") and a.s3_connections:
                env["FSSPEC_S3"] = json.dumps({"config_kwargs": {"max_pool_connections": a.s3_connections}})
            if lib == "streaming":
                env.update(RANK=str(r), WORLD_SIZE=str(world), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                           NODE_RANK=str(r), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(master_port),
                           GLOO_SOCKET_IFNAME="lo")
            elif lib.startswith("litdata"):
                env.update(WORLD_SIZE=str(world), GLOBAL_RANK=str(r),
                           NNODES=str(world if a.litdata_nodes == "world" else 1))
            inner = ("mount -t tmpfs -o size=1g tmpfs /dev/shm && mount --bind \"$1\" \"$2\" && shift 2 && "
                     "exec \"$@\"")
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", inner, "sh", cache_src, mnt,
                   sys.executable, HERE, "--worker", cfg]
            log = open(os.path.join(rdir, "log.txt"), "wb")
            logs.append(log)
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True))
            cfgs.append(c)
        deadline = time.time() + a.timeout
        while not all(os.path.exists(c["ready"]) or p.poll() is not None for c, p in zip(cfgs, procs)):
            if time.time() > deadline:
                break
            time.sleep(0.01)
        open(go, "w").close()
        for p in procs:
            try:
                p.wait(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
    finally:
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, 9)  # the session of a child this run started
                except ProcessLookupError:
                    pass
                p.wait()
        for log in logs:
            log.close()
        for px in proxies:
            px.stop()
    results = []
    for c in cfgs:
        try:
            with open(c["result"]) as f:
                results.append(json.load(f))
        except FileNotFoundError:
            tail = open(os.path.join(os.path.dirname(c["result"]), "log.txt"), errors="replace").read()[-1500:]
            results.append({"rank": c["rank"], "error": f"no result (timeout {a.timeout}s or crash); log tail: {tail}"})
    return results


def coverage(ids: list[int], n: int) -> tuple[int, int]:
    cnt = collections.Counter(ids)
    missing = sum(1 for i in range(n) if cnt.get(i, 0) == 0)
    dups = sum(v - 1 for v in cnt.values() if v > 1)
    return missing, dups


def first_error(results: list[dict]) -> str | None:
    for r in results:
        if r.get("error"):
            return f"rank {r['rank']}: {r['error']}"
    return None


def summarize(a, lib: str, A: list[dict], B: list[dict] | None) -> dict:
    n, pb = a.n_lib[lib], payload_bytes(a.seq)
    row: dict = {"lib": lib}
    err = first_error(A)
    if err:
        row["error"] = err
        return row
    row["ttfb_s"] = A[0]["ttfb"]
    row["ttfb_max_s"] = max(r["ttfb"] for r in A)
    s10 = [r["stats_at_frac"] for r in A if r.get("stats_at_frac")]
    samp = [r.get("samples_at_frac", 0) for r in A if r.get("stats_at_frac")]
    row["bytes10_mean"] = float(np.mean([s["bytes"] for s in s10])) if s10 else float("nan")
    row["bytes10_max"] = max((s["bytes"] for s in s10), default=0)
    row["req10_mean"] = float(np.mean([s["requests"] for s in s10])) if s10 else float("nan")
    row["samples10_mean"] = float(np.mean(samp)) if samp else float("nan")
    row["ratio10"] = sum(s["bytes"] for s in s10) / max(1, sum(samp) * pb)
    row["data_ratio10"] = sum(s["bytes"] - s.get("meta_bytes", 0) for s in s10) / max(1, sum(samp) * pb)
    if any("read_or_ahead_at_frac" in r for r in A):
        # Against what the loader has read (its prefetched batches too) or holds for the coming batches, not
        # the samples handed over: what it fetched and will never read is the waste.
        row["data_ratio10_of_read_or_ahead"] = round(sum(s["bytes"] - s.get("meta_bytes", 0) for s in s10) / max(
            1, sum(r.get("read_or_ahead_at_frac", 0) for r in A if r.get("stats_at_frac"))), 3)
    row["epoch_bytes_mean"] = float(np.mean([r["stats_final"]["bytes"] for r in A]))
    row["epoch_ratio"] = sum(r["stats_final"]["bytes"] for r in A) / max(1, sum(len(r["ids"]) for r in A) * pb)
    waits = np.array([w for r in A for w in r["waits"]]) * 1e3
    row["wait_n"] = len(waits)
    row["wait_p50_ms"] = float(np.median(waits)) if len(waits) else float("nan")
    row["wait_p90_ms"] = float(np.percentile(waits, 90)) if len(waits) else float("nan")
    # Percentiles alone flatter a reader whose waits come as a few long stalls (a store that cannot serve the
    # step's requests): the mean is the time lost per batch, the max the longest stall
    row["wait_mean_ms"] = float(np.mean(waits)) if len(waits) else float("nan")
    row["wait_max_ms"] = float(np.max(waits)) if len(waits) else float("nan")
    row["epoch_batches"] = [r["batches"] for r in A]
    row["A_max_next_s@batch"] = max((round(r["max_wait_s"], 3), r["max_wait_batch"]) for r in A)
    if any("reader_final" in r for r in A):
        row["read_ahead_window_max"] = max(r["reader_final"]["read_ahead_window"] for r in A if "reader_final" in r)
        row["builder_waits"] = sum(r["reader_final"]["builder_waits"] for r in A if "reader_final" in r)
    row["epoch_missing"], row["epoch_dups"] = coverage([i for r in A for i in r["ids"]], n)
    if B is None:
        row["resume"] = "not run"
        return row
    errB = first_error(B)
    if errB:
        row["resume"] = "refused/failed: " + errB
        return row
    before = [i for r in A for i in r.get("ids_at_k", [])]
    after = [i for r in B for i in r["ids"]]
    row["resume_missing"], row["resume_dups"] = coverage(before + after, n)
    row["resume_batches_B"] = [r["batches"] for r in B]
    row["resume_ttfb_s"] = B[0]["ttfb"]
    row["B_max_next_s@batch"] = max((round(r["max_wait_s"], 3), r["max_wait_batch"]) for r in B)
    row["B_elapsed_s"] = [round(r["elapsed"], 1) for r in B]
    row["resume"] = "ok"
    return row


def fmt_mib(b: float) -> str:
    return f"{b / 2**20:.2f}"


def markdown(a, rows: list[dict]) -> str:
    head = ["library", "TTFB rank0 s (max)", "fetched/rank @10% MiB (max)", "req/rank @10%",
            "samples/rank @10%", "fetched ÷ sample bytes @10% (metadata left out)", "epoch fetched/rank MiB (÷ sample bytes)",
            "wait p50 ms", "wait p90 ms", "wait mean ms", "wait max ms", f"epoch W={a.wa}: missing/dup",
            f"resume {a.wa}→{a.wb} @k={a.k}: missing/dup"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['lib']} | FAILED: {r['error'][:160].replace('|', '/')} |" + " |" * (len(head) - 2))
            continue
        if r["resume"] == "ok":
            res = f"{r['resume_missing']} / {r['resume_dups']}"
        else:
            res = r["resume"][:160].replace("|", "/").replace("\n", " ")
        lines.append("| " + " | ".join([
            r["lib"], f"{r['ttfb_s']:.2f} ({r['ttfb_max_s']:.2f})",
            f"{fmt_mib(r['bytes10_mean'])} ({fmt_mib(r['bytes10_max'])})", f"{r['req10_mean']:.1f}",
            f"{r['samples10_mean']:.0f}", f"{r['ratio10']:.2f}x ({r['data_ratio10']:.2f}x)",
            f"{fmt_mib(r['epoch_bytes_mean'])} ({r['epoch_ratio']:.2f}x)",
            f"{r['wait_p50_ms']:.2f}", f"{r['wait_p90_ms']:.2f}", f"{r['wait_mean_ms']:.2f}", f"{r['wait_max_ms']:.0f}",
            f"{r['epoch_missing']} / {r['epoch_dups']}", res]) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--probe", nargs=7, help=argparse.SUPPRESS)
    p.add_argument("--only", default="streaming,litdata,packer,packer-blocks,packer-local", help=f"comma list of {','.join(LIBS)}")
    p.add_argument("--n", type=int, default=2016, help="packs (2016 = 24 x 84: whole global batches)")
    p.add_argument("--seq", type=int, default=4096, help="tokens per pack")
    p.add_argument("--shard-bytes", type=int, default=1 << 20, help="MDS size_limit / litdata chunk_bytes")
    p.add_argument("--packer-shard-bytes", type=int, default=0,
                   help="Packer's shard size (0: --shard-bytes, the same layout); a range reader fetches only the "
                        "packs it reads whatever the shard size, so Packer's default (256 MiB) is a fair row too")
    p.add_argument("--wa", type=int, default=4, help="world size, phase A")
    p.add_argument("--ba", type=int, default=6, help="per-rank batch, phase A")
    p.add_argument("--wb", type=int, default=3, help="world size, phase B (resume)")
    p.add_argument("--bb", type=int, default=8, help="per-rank batch, phase B")
    p.add_argument("--k", type=int, default=10, help="batches per rank before the resume state is saved")
    p.add_argument("--frac", type=float, default=0.10, help="epoch fraction for the bytes-fetched snapshot")
    p.add_argument("--sleep", type=float, default=0.020, help="fake compute per batch (s)")
    p.add_argument("--warmup", type=int, default=10, help="batches before steady-state timing")
    p.add_argument("--steady", type=int, default=50, help="batches timed for the wait distribution")
    p.add_argument("--cache-limit", type=int, default=16 << 20, help="per-rank cache limit in bytes (0: none)")
    p.add_argument("--blocks", type=int, default=24,
                   help="packer-blocks: PackedLoader(shuffle_blocks=...) (24: a multiple of both batch sizes)")
    p.add_argument("--latency-ms", type=float, default=0.0,
                   help="time each proxy adds before each response (an object store's time to first byte; 0: none)")
    p.add_argument("--s3-connections", type=int, default=0,
                   help="Packer ranks: botocore max_pool_connections through the fsspec config (0: Packer's own, "
                        "S3_RANGE_CONNECTIONS; 10 is botocore's default, what Packer used before)")
    p.add_argument("--no-widen", action="store_true",
                   help="Packer's read-ahead window stays at --read-ahead (as before it widened while the builder waits)")
    p.add_argument("--read-ahead", type=int, default=4, help="Packer's read_ahead (batches; its default: 4)")
    p.add_argument("--litdata-nodes", choices=("world", "1"), default="world",
                   help="litdata NNODES: one node per rank (as the other libraries run) or all ranks on 1 node")
    p.add_argument("--timeout", type=float, default=120, help="seconds per phase before its ranks are killed")
    p.add_argument("--workdir", default="/tmp/streambench/work")
    p.add_argument("--json", default="/tmp/streambench/results.json")
    a = p.parse_args()
    if a.worker:
        worker_main(a.worker)
        return
    if a.serve:
        serve(*a.serve)
        return
    if a.probe:
        url, key, size, nbytes, n, seed, out = a.probe
        probe(url, key, int(size), int(nbytes), int(n), int(seed), out)
        return
    libs = [x.strip() for x in a.only.split(",") if x.strip()]
    bad = [x for x in libs if x not in LIBS]
    if bad:
        p.error(f"unknown libraries {bad}; choose from {LIBS}")
    if os.geteuid() != 0 or not shutil.which("unshare"):
        print("bench_streaming: skipped: needs root and unshare(1) (each rank runs in its own mount namespace: a "
              "private /dev/shm and cache, as separate machines have)")
        return

    t_start = time.time()
    os.environ.update(AWS_ENV)
    import boto3
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    server = Served("moto", "", a.workdir)
    moto_addr = ("127.0.0.1", server.port)
    s3 = boto3.client("s3", endpoint_url=f"http://{moto_addr[0]}:{moto_addr[1]}")
    s3.create_bucket(Bucket=BUCKET)

    tokens, mask = make_data(a.n, a.seq)
    a.n_lib = {}
    prep: dict[str, str] = {}
    for lib in libs:
        t = time.time()
        try:
            if lib == "streaming":
                out = os.path.join(a.workdir, "src_mds")
                write_mds(out, tokens, mask, a.shard_bytes)
                size = upload_folder(s3, out, "mds", last=("index.json",))
                a.n_lib[lib] = a.n
            elif lib.startswith("litdata"):
                if "lit" not in prep.values():
                    out = os.path.join(a.workdir, "src_lit")
                    write_litdata(out, tokens, mask, a.shard_bytes)
                    size = upload_folder(s3, out, "lit", last=("index.json",))
                else:
                    size = 0
                a.n_lib[lib] = a.n
            else:
                _SHARD_BYTES[0] = a.packer_shard_bytes or a.shard_bytes
                if getattr(a, "local_run", None) is None:
                    a.local_run = make_packer_run(os.path.join(a.workdir, "src_packer"), tokens, mask)
                run = a.local_run
                size = 0 if lib == "packer-local" else upload_folder(s3, run, "run", last=("shards/manifest.json",))
                a.n_lib[lib] = packer_num_packs(run, a.n)
            prep[lib] = "lit" if lib.startswith("litdata") else lib
            print(f"[prep] {lib}: wrote + uploaded {size / 2**20:.1f} MiB in {time.time() - t:.1f}s", flush=True)
        except Exception as e:
            prep[lib] = f"ERROR {type(e).__name__}: {e}"
            print(f"[prep] {lib}: {prep[lib]}", flush=True)

    s3.put_object(Bucket=BUCKET, Key="probe.bin", Body=np.random.default_rng(2).bytes(8 << 20))
    cap = store_capacity(server.port, a.workdir, "probe.bin", 8 << 20, a.seq * 2, a.wa)
    # Packer's default order reads packs in random order: two range requests a pack (its tokens, its mask)
    demand = a.wa * a.ba * 2 / a.sleep if a.sleep > 0 else float("inf")
    print(f"[store] {cap['requests_per_s']:.0f} range GETs/s of {a.seq * 2:,} B to {a.wa} clients, each through "
          f"its own proxy (client CPU "
          f"{cap['client_cpu_ms_per_request']:.2f} ms a request); Packer's default order at this step asks "
          f"{demand:.0f}/s ({demand / cap['requests_per_s']:.2f}x that) plus the sleep-free ranks' compute",
          flush=True)
    rows, raw = [], {}
    for lib in libs:
        if prep[lib].startswith("ERROR"):
            rows.append({"lib": lib, "error": "prep: " + prep[lib]})
            continue
        t = time.time()
        walls = {}
        A = run_phase(a, lib, "A", a.wa, a.ba, moto_addr, None, "A")
        walls["A"] = round(time.time() - t, 1)
        print(f"[run] {lib} phase A (W={a.wa}, B={a.ba}): {time.time() - t:.1f}s"
              + (f"  ERROR {first_error(A)}" if first_error(A) else ""), flush=True)
        B = None
        if not first_error(A):
            state = A[0].get("state")
            if state is None:
                B = [{"rank": 0, "error": f"no state saved at k={a.k} (epoch shorter than k?)"}]
            else:
                t = time.time()
                B = run_phase(a, lib, "B", a.wb, a.bb, moto_addr, state, "B")
                walls["B"] = round(time.time() - t, 1)
                print(f"[run] {lib} phase B (resume W={a.wb}, B={a.bb}): {time.time() - t:.1f}s"
                      + (f"  ERROR {first_error(B)}" if first_error(B) else ""), flush=True)
        raw[lib] = {"A": A, "B": B}
        rows.append(summarize(a, lib, A, B))
        rows[-1]["phase_wall_s"] = walls
    server.stop()
    table = markdown(a, rows)
    print()
    print(f"N={a.n} packs x {a.seq} uint16 tokens + uint8 mask ({payload_bytes(a.seq)} B/pack, "
          f"{a.n * payload_bytes(a.seq) / 2**20:.1f} MiB); shards ~{a.shard_bytes / 2**20:g} MiB"
          + (f" (Packer's: {a.packer_shard_bytes / 2**20:g} MiB)" if a.packer_shard_bytes else "") + "; "
          f"phase A W={a.wa} batch={a.ba}; resume W={a.wb} batch={a.bb} after k={a.k} batches/rank; "
          f"sleep {a.sleep * 1e3:g} ms/batch; waits: batches {a.warmup + 1}..{a.warmup + a.steady} pooled over "
          f"ranks; cache limit {a.cache_limit / 2**20:g} MiB/rank; shuffle on, seed 0; num_workers=0; store: moto "
          f"and each rank's proxy a process of their own, {a.latency_ms:g} ms added a request; the store served "
          f"{cap['requests_per_s']:.0f} range GETs/s to {a.wa} clients, Packer's default order asks {demand:.0f}/s")
    print()
    print(table)
    print()
    for r in rows:
        extra = {k: r[k] for k in ("data_ratio10_of_read_or_ahead", "read_ahead_window_max", "builder_waits",
                                   "epoch_batches", "A_max_next_s@batch", "resume_batches_B",
                                                 "resume_ttfb_s", "B_max_next_s@batch", "B_elapsed_s", "phase_wall_s") if k in r}
        if extra:
            print(f"- {r['lib']}: {json.dumps(extra)}")
    print(f"\ntotal runtime {time.time() - t_start:.1f}s")
    with open(a.json, "w") as f:
        json.dump({"rows": rows, "raw": raw, "store": cap, "demand_default_order": demand, "args": {k: v for k, v in vars(a).items()}}, f, default=str)


if __name__ == "__main__":
    main()
