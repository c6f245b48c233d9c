"""Benchmark the mirror with its upstream down, alone and side by side with verdaccio and devpi.

Builds a throwaway Forage (SQLite; its archive in the flatfs layout, one file per block) holding:

- ``--tarballs`` npm packages of one tarball each (a real npm tarball wrapping
  ``--tarball-size`` random bytes);
- one npm package, ``big``, with ``--versions`` archived versions (real npm tarballs, so the
  fallback packument reads each version's ``package.json`` from the archive);
- one PyPI project, ``sample-project``, with ``--files`` archived wheels;

points the npm and PyPI registries at a closed port (connection refused: the upstream is
down), serves only the mirror routes, and drives it from a separate process with
``--clients`` concurrent connections (one aiohttp client in its own process). First
(``fallback_packument_cold``), the abbreviated packument of ``big`` asked for by all the
clients at once of a fresh Forage, which has to build it from the archive: how long the
answers take, the server's CPU seconds and its peak RSS against its RSS before. Then Forage
alone (the fields the README has quoted since issue 7): requests/s and MB/s for tarballs,
p50/p99 latency of the full packument and the simple page (JSON form, as pip asks) after one
cold request each, and the server's peak RSS (``server_peak_rss_mb``, setup included).

Then ``comparison``: Forage and each of ``--peers`` (verdaccio 6 for npm, devpi-server for
PyPI), one after another, each alone on the machine, in two modes: ``upstream_down`` (the
upstream refuses connections) and ``offline`` (Forage ``mirror.offline = true``, devpi
``--offline-mode``, verdaccio with no uplink). The peers hold the same packages, proxied once
from the project's loopback fakes, which are then stopped (see ``bench_mirror_peers.py``).
Per server and mode, for a tarball, the abbreviated packument of ``big`` (npm's ``Accept``),
the simple page (pip's ``Accept``) and ``--wheels`` wheels: requests/s, p50, p99, errors and
the server's CPU time per request (``server_cpu_ms_per_request``, which a busy machine
disturbs least) after a warm-up of ``--warmup`` x the requests, left out; and the server's
peak RSS while it was measured (``VmHWM``, reset before the warm-up).
``forage_over_best_peer`` divides Forage's requests/s by the best peer's on each endpoint
(and the peer's p99 and CPU time per request by Forage's).

The peers are installed into ``--scratch`` on first use (npm and pip reach their registries
then, and only then); a peer that cannot be installed or started is reported as
``unavailable`` with the reason, and the rest is measured. The benchmark itself contacts no
public registry.

Run: ``python3 scripts/bench_mirror.py`` (about half an hour on 2 cores, most of it the
peers' answers for the 10,000-version packument), Forage alone with ``--peers none`` (about
five minutes), or smaller with ``--versions 1000 --files 200 --tarballs 50`` while developing;
``--sections`` and ``--endpoints`` run parts only (``--sections comparison --endpoints wheel``
measures Forage and devpi on wheels, nothing else). Prints one JSON document;
``load_average_at_start``/``_at_end`` say how quiet the machine was.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import bench_mirror_load as bench
import bench_mirror_peers as peers
from bench_mirror_data import PROJECT, npm_fake, populate, pypi_app

#: Endpoints of the comparison, and which peer serves each.
SERVED_BY = {
    "tarball": "verdaccio",
    "abbreviated_packument": "verdaccio",
    "simple_page": "devpi",
    "wheel": "devpi",
}
#: The parts of a run (``--sections``).
SECTIONS = ("cold_packument", "alone", "comparison")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_config(root: Path, *, offline: bool = False) -> Path:
    down = f"http://127.0.0.1:{closed_port()}"
    path = root / ("forage-offline.toml" if offline else "forage.toml")
    path.write_text(
        f'[data]\ndir = "{root / "data"}"\n'
        f"[mirror]\ndown_seconds = 600\noffline = {'true' if offline else 'false'}\n"
        f'[registries.npm]\nregistry_url = "{down}/npm"\nreplicate_url = "{down}/replicate"\n'
        "allow_http = true\n"
        f'[registries.pypi]\nindex_url = "{down}/simple"\njson_url = "{down}/pypi"\n'
        f'xmlrpc_url = "{down}/pypi"\nallow_http = true\n'
    )
    return path


# -- Forage -----------------------------------------------------------------------------------


async def with_forage(config: Any, body: Callable[[str], Awaitable[dict[str, Any]]]) -> Any:
    """Serve the mirror routes of ``config`` in this process while ``body(url)`` runs."""
    from aiohttp import web

    import forage.mirror
    from forage.archive.blocks import open_blockstore
    from forage.db.engine import make_engine, make_sessionmaker
    from forage.server.app import error_middleware
    from forage.server.state import BLOCKSTORE, CONFIG, SESSIONMAKER
    from indexers.fakeserver import start_fake

    engine = make_engine(config.database)
    app = web.Application(middlewares=[error_middleware])
    app[CONFIG] = config
    app[SESSIONMAKER] = make_sessionmaker(engine)
    app[BLOCKSTORE] = open_blockstore(config)
    forage.mirror.setup(app)
    running = await start_fake(app)
    try:
        return await body(running.url)
    finally:
        await running.close()
        engine.dispose()


def forage_endpoint(name: str, paths: list[str], total: int, **headers: str) -> bench.Endpoint:
    """An endpoint whose every answer must come from Forage's archive."""
    return bench.Endpoint(name, paths, total, headers, "Forage-Source", "archive")


async def forage_alone(config: Any, plan: dict[str, Any], args: argparse.Namespace) -> Any:
    """The Forage-only figures (issue 7's fields): no warm-up, one cold request per page."""
    json_accept = {"accept": "application/json"}
    pip = {"accept": bench.PIP_ACCEPT}
    endpoints = [
        forage_endpoint("tarballs", plan["blobs"], args.tarball_requests),
        forage_endpoint("packument_cold", ["/npm/big"], 1, **json_accept),
        forage_endpoint("simple_page_cold", [f"/pypi/simple/{PROJECT}/"], 1, **pip),
        forage_endpoint("packument", ["/npm/big"], args.page_requests, **json_accept),
        forage_endpoint("simple_page", [f"/pypi/simple/{PROJECT}/"], args.page_requests, **pip),
    ]

    async def body(url: str) -> dict[str, Any]:
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        measured = await bench.measure(url, endpoints, clients=args.clients, warmup=0)
        results: dict[str, Any] = {}
        for name, figures in measured.items():
            if figures["errors"]:
                raise RuntimeError(f"{name}: {figures['error_kinds']}")
            figures.pop("errors")
            if name.endswith("_cold"):
                results[f"{name}_ms"] = figures["p50_ms"]
            else:
                results[name] = figures
        results["server_peak_rss_mb"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
        )
        results["server_rss_before_load_mb"] = round(rss_before / 1024, 1)
        return results

    return await with_forage(config, body)


async def cold_packument(config: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The abbreviated fallback packument of ``big``, asked for by ``--clients`` clients at
    once of a Forage that has not built it yet (issue 16: one build, shared): how long the
    answers take (an answer slower than the client's 120 s is an error), the server CPU time,
    and how far the server's memory grows."""
    endpoint = forage_endpoint("packument", ["/npm/big"], args.clients, accept=bench.NPM_ACCEPT)

    async def body(url: str) -> dict[str, Any]:
        pid = os.getpid()
        before = bench.rss_mb(pid)
        bench.reset_peak_rss(pid)
        measured = await bench.measure(url, [endpoint], clients=args.clients, warmup=0, pid=pid)
        figures = measured["packument"]
        return {
            "versions": args.versions,
            "clients": args.clients,
            "errors": figures.get("error_kinds", {}),
            "seconds": figures["seconds"],
            "slowest_ms": figures["p99_ms"],
            "server_cpu_seconds": round(
                figures["server_cpu_ms_per_request"] * args.clients / 1000, 2
            ),
            "bytes_per_response": figures["bytes_per_response"],
            "server_rss_before_mb": before,
            "server_peak_rss_mb": bench.peak_rss_mb(pid),
        }

    result: dict[str, Any] = await with_forage(config, body)
    return result


def peer_endpoint(name: str, paths: list[str], total: int, **headers: str) -> bench.Endpoint:
    """An endpoint of a peer: any 200 answer counts."""
    return bench.Endpoint(name, paths, total, headers)


def comparison_endpoints(
    args: argparse.Namespace,
    *,
    tarball: Callable[[str], str] | None = None,
    packument: str | None = None,
    page: str | None = None,
    wheel_paths: list[str] | None = None,
    check: Callable[..., bench.Endpoint] | None = None,
) -> list[bench.Endpoint]:
    """The comparison's endpoints a server has (``None``: not its ecosystem)."""
    make = check or peer_endpoint
    out = []
    wanted = set(args.endpoints)
    tarball = tarball if "tarball" in wanted else None
    packument = packument if "abbreviated_packument" in wanted else None
    page = page if "simple_page" in wanted else None
    wheel_paths = wheel_paths if "wheel" in wanted else None
    if tarball is not None:
        paths = [tarball(f"blob-{i}") for i in range(args.tarballs)]
        out.append(make("tarball", paths, args.tarball_requests))
    if packument is not None:
        out.append(
            make("abbreviated_packument", [packument], args.page_requests, accept=bench.NPM_ACCEPT)
        )
    if page is not None:
        out.append(make("simple_page", [page], args.page_requests, accept=bench.PIP_ACCEPT))
    if wheel_paths is not None:
        out.append(make("wheel", wheel_paths, args.tarball_requests))
    return out


def measure_server(
    url: str, pid: int, endpoints: list[bench.Endpoint], args: argparse.Namespace
) -> dict[str, Any]:
    """Figures of ``endpoints`` and the server's peak RSS while they were measured."""
    bench.reset_peak_rss(pid)
    results = asyncio.run(
        bench.measure(url, endpoints, clients=args.clients, warmup=args.warmup, pid=pid)
    )
    results["peak_rss_mb"] = bench.peak_rss_mb(pid)
    return results


async def forage_modes(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    from forage import __version__
    from forage.config import load_config

    report: dict[str, Any] = {"version": __version__}
    for mode, offline in (("upstream_down", False), ("offline", True)):
        config = load_config(write_config(root, offline=offline), environ={})

        async def body(url: str) -> dict[str, Any]:
            page = f"/pypi/simple/{PROJECT}/"
            paths = await asyncio.to_thread(bench.discover_files, url, page, ".whl", args.wheels)
            endpoints = comparison_endpoints(
                args,
                tarball=lambda name: f"/npm/{name}/-/{name}-1.0.0.tgz",
                packument="/npm/big",
                page=page,
                wheel_paths=paths,
                check=forage_endpoint,
            )
            return await asyncio.to_thread(measure_server, url, os.getpid(), endpoints, args)

        report[mode] = await with_forage(config, body)
    return report


# -- the peers --------------------------------------------------------------------------------


def run_peer(name: str, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Install (if needed), prime and measure one peer in both modes."""
    scratch = Path(args.scratch).expanduser()
    try:
        scratch.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise peers.PeerUnavailable(f"no scratch folder {scratch}: {exc}") from exc
    if name == "verdaccio":
        command, version = peers.install_verdaccio(scratch)
        registry = npm_fake(args)
        blobs = [f"/blob-{i}/-/blob-{i}-1.0.0.tgz" for i in range(args.tarballs)]
        prime = peers.prime_npm([f"blob-{i}" for i in range(args.tarballs)], blobs, ["/big"])

        def verdaccio(server: peers.Server, mode: str) -> dict[str, Any]:
            endpoints = comparison_endpoints(
                args, tarball=lambda n: f"/{n}/-/{n}-1.0.0.tgz", packument="/big"
            )
            return measure_server(server.url, server.pid, endpoints, args)

        modes = peers.run_verdaccio(
            command, root / "verdaccio", registry.make_app(), prime, verdaccio
        )
    else:
        bin_dir, version = peers.install_devpi(scratch)
        page = f"{peers.INDEX}/+simple/{PROJECT}/"

        def devpi(server: peers.Server, mode: str) -> dict[str, Any]:
            paths = bench.discover_files(server.url, page, ".whl", args.wheels)
            endpoints = comparison_endpoints(args, page=page, wheel_paths=paths)
            return measure_server(server.url, server.pid, endpoints, args)

        modes = peers.run_devpi(
            bin_dir,
            root / "devpi",
            pypi_app(args),
            peers.prime_pypi(page, args.wheels),
            devpi,
        )
    return {"version": version, **modes}


def ratios(servers: dict[str, Any]) -> dict[str, Any]:
    """Forage's requests/s over the best peer's, per mode and endpoint."""
    out: dict[str, Any] = {}
    for mode in ("upstream_down", "offline"):
        for endpoint, peer in SERVED_BY.items():
            theirs = servers.get(peer, {}).get(mode, {}).get(endpoint)
            ours = servers["forage"][mode].get(endpoint)
            if ours and theirs and theirs["requests_per_second"]:
                out.setdefault(mode, {})[endpoint] = {
                    "best_peer": peer,
                    "requests_per_second": round(
                        ours["requests_per_second"] / theirs["requests_per_second"], 2
                    ),
                    "peer_p99_over_forage_p99": round(
                        theirs["p99_ms"] / max(ours["p99_ms"], 0.1), 2
                    ),
                    "peer_cpu_over_forage_cpu": round(
                        theirs["server_cpu_ms_per_request"]
                        / max(ours["server_cpu_ms_per_request"], 0.01),
                        2,
                    ),
                }
    return out


def parse_peers(text: str) -> list[str]:
    names = [] if text == "none" else [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(peers.PEERS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown peer {', '.join(unknown)}: choose from {', '.join(peers.PEERS)} or none"
        )
    return names


def parse_sections(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown section {', '.join(unknown)}: choose from {', '.join(SECTIONS)}"
        )
    return names


def parse_endpoints(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(SERVED_BY))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown endpoint {', '.join(unknown)}: choose from {', '.join(SERVED_BY)}"
        )
    return names


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written, and each option's default."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--tarballs", type=int, default=200, help="npm packages")
    parser.add_argument(
        "--tarball-size", type=int, default=512 * 1024, help="random bytes per tarball"
    )
    parser.add_argument(
        "--tarball-requests", type=int, default=2000, help="requests per file endpoint"
    )
    parser.add_argument("--versions", type=int, default=10_000, help="versions of npm 'big'")
    parser.add_argument("--files", type=int, default=2_000, help="files of sample-project")
    parser.add_argument("--page-requests", type=int, default=400, help="requests per document")
    parser.add_argument("--clients", type=int, default=20, help="concurrent connections")
    parser.add_argument(
        "--wheels", type=int, default=200, help="wheels requested in turn (comparison)"
    )
    parser.add_argument(
        "--warmup", type=float, default=0.1, help="warm-up share of requests (comparison)"
    )
    parser.add_argument(
        "--peers",
        type=parse_peers,
        default=",".join(peers.PEERS),
        help="comma-separated peers to compare with, or none",
    )
    parser.add_argument(
        "--endpoints",
        type=parse_endpoints,
        default=",".join(SERVED_BY),
        help="comma-separated endpoints of the comparison (a peer serving none is skipped)",
    )
    parser.add_argument(
        "--sections",
        type=parse_sections,
        default=",".join(SECTIONS),
        help="comma-separated parts to run: " + ", ".join(SECTIONS),
    )
    parser.add_argument(
        "--scratch",
        default="~/.cache/forage-bench-mirror",
        help="where the peers are installed and kept between runs",
    )
    args = parser.parse_args()
    # A SIGTERM unwinds like Ctrl-C: the peers are stopped and the scratch run removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from forage.config import load_config

    load_at_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="forage-bench-mirror-") as tmp:
        root = Path(tmp)
        config = load_config(write_config(root), environ={})
        started = time.perf_counter()
        plan = populate(config, args)
        setup_seconds = round(time.perf_counter() - started, 1)
        results: dict[str, Any] = {}
        if "cold_packument" in args.sections:
            results["fallback_packument_cold"] = asyncio.run(cold_packument(config, args))
        if "alone" in args.sections:
            results.update(asyncio.run(forage_alone(config, plan, args)))
        servers: dict[str, Any] = {}
        if "comparison" in args.sections:
            servers["forage"] = asyncio.run(forage_modes(root, args))
            serving = {SERVED_BY[endpoint] for endpoint in args.endpoints}
            for name in [peer for peer in args.peers if peer in serving]:
                try:
                    servers[name] = run_peer(name, root, args)
                except peers.PeerUnavailable as exc:
                    servers[name] = {"unavailable": str(exc)}
    report = {
        "benchmark": "mirror, upstream down (connection refused)",
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(load, 2) for load in load_at_start],
        "load_average_at_end": [round(load, 2) for load in os.getloadavg()],
        "setup_seconds": setup_seconds,
        "parameters": vars(args),
        **results,
        "comparison": {
            "load_generator": f"aiohttp from one separate process, {args.clients} connections",
            "servers": servers,
            "forage_over_best_peer": ratios(servers) if servers else {},
        },
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
