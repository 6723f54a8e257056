"""Benchmark: downloading a URL manifest, the download step against one-after-another fetches.

Images are served from loopback with a fixed latency per request (50 ms by default, standing in
for the internet) by ``tests/image_server.py``, in server processes of their own so that the
client's threads and the servers do not share one interpreter. ``--hosts`` servers listen on
127.0.0.1, 127.0.0.2, ... (all loopback on Linux), so the per-host limit is exercised as on a
crawl of many sites.

(a) baseline: ``remote_fetch.fetch`` for each URL, one after another (what ingest did per
    worker before the download step), on the first ``--baseline-images`` URLs;
(b) the download step, ``url_download.download_day`` with its defaults (64 threads, 8 per
    host, shards of 1,000), on all ``--images`` URLs, written as shards to a temporary folder;
(c) requests per image through the chain: a small URL day materialized through every asset to
    data_cards (smoke models), counting the servers' requests per URL. With
    ``--old-checkout PATH`` (a checkout of an earlier commit, e.g. from ``git worktree add``)
    the same day goes through that code too, for the figure before the download step.

Usage: .venv/bin/python bench/download.py [--images 4000] [--latency-ms 50] [--hosts 16]
       [--baseline-images 200] [--chain-images 40] [--old-checkout /tmp/old]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dataplatform.core.ingest.landing import discover  # noqa: E402
from dataplatform.core.ingest.remote_fetch import fetch  # noqa: E402
from dataplatform.core.ingest.url_download import DownloadOptions, download_day  # noqa: E402

DATE = "2025-01-01"


def _serve(host: str, latency_s: float, ready: multiprocessing.Queue) -> None:
    from tests.image_server import ImageServer

    with ImageServer(host=host, latency_s=latency_s) as server:
        ready.put(server.port)
        while True:
            time.sleep(3600)


class Servers:
    """``count`` image servers on 127.0.0.1.. in processes of their own."""

    def __init__(self, count: int, latency_s: float) -> None:
        context = multiprocessing.get_context("spawn")
        self.hosts = [f"127.0.0.{i + 1}" for i in range(count)]
        self.ports: list[int] = []
        self._processes = []
        for host in self.hosts:
            ready = context.Queue()
            process = context.Process(target=_serve, args=(host, latency_s, ready), daemon=True)
            process.start()
            self._processes.append(process)
            self.ports.append(ready.get(timeout=60))

    def url(self, n: int) -> str:
        i = n % len(self.hosts)
        return f"http://{self.hosts[i]}:{self.ports[i]}/img/{n}.jpg"

    def hits(self) -> dict[str, int]:
        """Requests per URL so far, summed over the servers."""
        out: dict[str, int] = {}
        for host, port in zip(self.hosts, self.ports, strict=True):
            with urllib.request.urlopen(f"http://{host}:{port}/_hits", timeout=10) as answer:
                for path, n in json.loads(answer.read()).items():
                    out[f"http://{host}:{port}{path}"] = n
        return out

    def close(self) -> None:
        for process in self._processes:
            process.terminate()


def _manifest(day: Path, urls: list[str]) -> None:
    day.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"p{n:06d}", "image": u, "text": f"photo {n}"} for n, u in enumerate(urls)]
    (day / "urls.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def bench_baseline(servers: Servers, n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        fetch(servers.url(100_000 + i))
    return n / (time.perf_counter() - started)


def bench_download(servers: Servers, n: int) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        day = Path(tmp) / "landing" / DATE
        _manifest(day, [servers.url(200_000 + i) for i in range(n)])
        records = discover(day)
        started = time.perf_counter()
        report = download_day(day, records, DownloadOptions())
        wall = time.perf_counter() - started
        assert report.succeeded == n, dict(report.failures)
        return n / wall, {
            "shards": len(report.shards),
            "requests": report.requests,
            "bytes": sum(p.stat().st_size for p in (day / "_downloads").iterdir()),
        }


_CHAIN = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    sys.path.insert(0, os.environ["CHECKOUT"])
    os.chdir(os.environ["CHECKOUT"])
    import dagster as dg
    from dataplatform.core.store.home import Home
    from tests.assets.conftest import materialize_cards, materialize_day
    home = Home(Path(os.environ["HOME_DIR"]))
    instance = dg.DagsterInstance.ephemeral()
    day = materialize_day(home, os.environ["DATE"], instance)
    cards = materialize_cards(home, os.environ["DATE"], instance)
    print(json.dumps({"curation": day.success, "cards": cards.success}))
    """
)


def bench_chain(servers: Servers, n: int, checkout: Path, tag: str) -> dict:
    """Requests per URL for a day taken through every asset by the code in ``checkout``."""
    before = servers.hits()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        # The first ten are the full-size photographs (so enough survive to train the
        # tokenizer); the rest smaller versions of them.
        urls = [servers.url(i) for i in range(n)]
        _manifest(home / "landing" / DATE, urls)
        env = {
            **os.environ,
            "CHECKOUT": str(checkout),
            "HOME_DIR": str(home),
            "DATE": DATE,
            "DATAPLATFORM_PROFILE": "smoke",
            "HF_HUB_OFFLINE": "1",
            "DATAPLATFORM_ALLOW_NETWORKS": ",".join(f"{h}/32" for h in servers.hosts),
        }
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", _CHAIN], env=env, capture_output=True, text=True, timeout=1800
        )
        wall = time.perf_counter() - started
        if out.returncode != 0:
            raise SystemExit(f"{tag} chain failed:\n{out.stderr[-3000:]}")
        status = json.loads(out.stdout.strip().splitlines()[-1])
    after = servers.hits()
    asked = {u: after.get(u, 0) - before.get(u, 0) for u in urls}
    return {
        "status": status,
        "requests": sum(asked.values()),
        "per_image": sum(asked.values()) / len(urls),
        "most_for_one_url": max(asked.values()),
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--hosts", type=int, default=16)
    parser.add_argument("--baseline-images", type=int, default=200)
    parser.add_argument("--chain-images", type=int, default=40)
    parser.add_argument("--old-checkout", type=Path)
    args = parser.parse_args()
    os.environ["DATAPLATFORM_ALLOW_NETWORKS"] = ",".join(
        f"127.0.0.{i + 1}/32" for i in range(args.hosts)
    )
    print(
        f"{args.hosts} loopback image servers, {args.latency_ms:g} ms per request, "
        f"{os.cpu_count()} CPUs here"
    )
    servers = Servers(args.hosts, args.latency_ms / 1000)
    try:
        for i in range(args.hosts):  # warm: each server's first answer builds its photos
            fetch(servers.url(i))
        base = bench_baseline(servers, args.baseline_images)
        print(f"(a) one after another: {base:8.1f} images/s  ({args.baseline_images} images)")
        rate, facts = bench_download(servers, args.images)
        print(
            f"(b) download step:     {rate:8.1f} images/s  ({args.images} images, "
            f"{facts['shards']} shards, {facts['bytes'] / 1e6:.1f} MB, "
            f"{facts['requests']} requests)  = {rate / base:.1f}x the baseline"
        )
        chains = [("this checkout", ROOT)]
        if args.old_checkout:
            chains.append((f"old checkout {args.old_checkout}", args.old_checkout))
        for tag, checkout in chains:
            chain = bench_chain(servers, args.chain_images, checkout, tag)
            print(
                f"(c) {tag}: {chain['requests']} requests for {args.chain_images} URLs "
                f"through every asset to data_cards = {chain['per_image']:.2f} per image "
                f"(most for one URL: {chain['most_for_one_url']}; runs {chain['status']}, "
                f"{chain['wall_s']:.0f} s)"
            )
    finally:
        servers.close()


if __name__ == "__main__":
    main()
