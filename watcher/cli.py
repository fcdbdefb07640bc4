"""The `backup-watcher` command: argv -> config -> logging -> run, with the contract's exit codes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import yaml

from watcher import __version__
from watcher.config import Config, apply_env_overrides, effective_config, load_config, parse_duration
from watcher.errors import ConfigError, WatcherError
from watcher.logs import configure_logging, release_broken_streams

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_CONFIG = 2


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=os.environ.get("WATCHER_CONFIG"),
        help="config file (default: $WATCHER_CONFIG)",
    )


def _add_shard(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shard-index",
        type=int,
        help="this replica's shard (default: $WATCHER_SHARD_INDEX or the pod name's ordinal)",
    )
    parser.add_argument("--shard-count", type=int, help="number of shards (default: $WATCHER_SHARD_COUNT)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backup-watcher",
        description="Watch Azure Backup jobs and expose them as Prometheus metrics.",
    )
    parser.add_argument("--version", action="version", version=f"backup-watcher {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon")
    _add_config(run)
    _add_shard(run)
    run.add_argument("--listen", help="HOST:PORT for /metrics (overrides http.listen)")

    check = sub.add_parser("check-config", help="validate a config file and print the effective config")
    _add_config(check)

    demo = sub.add_parser("demo", help="run against the built-in simulator; no Azure account needed")
    demo.add_argument(
        "--listen", default="127.0.0.1:9464", help="HOST:PORT for /metrics (default 127.0.0.1:9464)"
    )
    demo.add_argument(
        "--log-format", choices=["json", "console"], help="also write logs in this format to stderr"
    )
    _add_shard(demo)

    track = sub.add_parser("track", help="follow one job until it ends; the exit status tells how it ended")
    _add_config(track)
    target = track.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--vault-id",
        help="the vault's ARM id: /subscriptions/S/resourceGroups/RG/providers/Microsoft.RecoveryServices"
        "/vaults/NAME or .../Microsoft.DataProtection/backupVaults/NAME",
    )
    target.add_argument("--operation-url", help="an Azure-AsyncOperation or backupOperations URL")
    track.add_argument("--job-id", help="the job to follow (with --vault-id)")
    track.add_argument("--timeout", help="give up after this long (e.g. 30m); exit 6")
    track.add_argument("--interval", default="10s", help="how often to look (default 10s)")
    track.add_argument("--json", action="store_true", help="JSON lines for pipelines")

    history = sub.add_parser("history", help="print recorded transitions from the state store")
    _add_config(history)
    history.add_argument("job_id", nargs="?", metavar="JOB_ID", help="only this job")
    history.add_argument("--json", action="store_true", help="JSON instead of a table")
    history.add_argument("--limit", type=int, default=None, help="only the newest N transitions")

    simulate = sub.add_parser("simulate", help="run the Azure Backup simulator alone")
    simulate.add_argument("--port", type=int, default=8080)
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--tls", action="store_true", help="serve https with a self-signed certificate")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = {
        "run": cmd_run,
        "check-config": cmd_check_config,
        "demo": cmd_demo,
        "track": cmd_track,
        "history": cmd_history,
        "simulate": cmd_simulate,
    }[args.command]
    try:
        return handler(args)
    except ConfigError as exc:
        for line in exc.lines():
            _error(f"error: {line}")
        return EXIT_CONFIG
    except WatcherError as exc:
        _error(f"error: {exc}")
        return EXIT_FATAL
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        return EXIT_FATAL  # whoever read our output left (`history | head`); nothing is lost but output
    finally:
        # Python flushes stdout and stderr as it exits; one whose pipe is gone would make that status 120.
        release_broken_streams()


def _error(line: str) -> None:
    """A line on stderr, if stderr can still be written: the exit status is what must come through."""
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr)


def _need_config(args: argparse.Namespace) -> str:
    if not args.config:
        raise ConfigError(
            "backup-watcher", [("--config", "no config file given (use --config FILE or WATCHER_CONFIG)")]
        )
    return str(args.config)


def _load(args: argparse.Namespace, *, require_vaults: bool = True) -> Config:
    return apply_env_overrides(load_config(_need_config(args), require_vaults=require_vaults))


def _shard(args: argparse.Namespace) -> tuple[int, int] | None:
    from watcher.sharding import resolve_shard

    try:
        return resolve_shard(args.shard_index, args.shard_count)
    except ValueError as exc:
        raise ConfigError("backup-watcher", [("--shard-index/--shard-count", str(exc))]) from None


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    print(f"# {args.config}: valid", file=sys.stderr)
    print(yaml.safe_dump(effective_config(config), sort_keys=False), end="")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from watcher.app import run_daemon

    config = _load(args)
    shard = _shard(args)
    if args.listen:
        from watcher.config import parse_listen

        try:
            parse_listen(args.listen)
        except ValueError as exc:
            raise ConfigError("backup-watcher", [("--listen", str(exc))]) from None
    configure_logging(config.logging.format, config.logging.level)
    return asyncio.run(run_daemon(config, config_path=args.config, shard=shard, listen=args.listen))


def cmd_demo(args: argparse.Namespace) -> int:
    from watcher.demo import run_demo

    return run_demo(listen=args.listen, log_format=args.log_format, shard=_shard(args))


def cmd_track(args: argparse.Namespace) -> int:
    from watcher.track import EXIT_USAGE, track

    if args.vault_id and not args.job_id:
        print("error: --vault-id needs --job-id", file=sys.stderr)
        return EXIT_USAGE
    if args.operation_url and args.job_id:
        print("error: --job-id goes with --vault-id, not --operation-url", file=sys.stderr)
        return EXIT_USAGE
    try:
        timeout = parse_duration(args.timeout) if args.timeout else None
        interval = parse_duration(args.interval)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    config = _load(args, require_vaults=False)
    configure_logging(config.logging.format, "error")
    mode = "json" if args.json else ("live" if sys.stdout.isatty() else "plain")
    return asyncio.run(
        track(
            config,
            vault_id=args.vault_id,
            job_id=args.job_id,
            operation_url=args.operation_url,
            give_up_after=timeout,
            interval=interval,
            mode=mode,
        )
    )


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def cmd_history(args: argparse.Namespace) -> int:
    from watcher.store import Store

    config = _load(args, require_vaults=False)
    store = Store.open(config.store.path, read_only=True)
    try:
        rows = store.transitions(args.job_id, limit=args.limit)
    finally:
        store.close()
    if args.json:
        for row in rows:
            row["observed_at"] = _iso(row["observed_at"])
            row["job_start"] = _iso(row["job_start"])
            row["job_end"] = _iso(row["job_end"])
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("no transitions recorded" + (f" for job {args.job_id}" if args.job_id else ""))
        return EXIT_OK
    header = ("OBSERVED (UTC)", "VAULT", "JOB ID", "OPERATION", "ENTITY", "FROM", "TO")
    table = [
        (
            _when(r["observed_at"]),
            r["vault"],
            r["job_id"],
            r["operation"],
            r["entity"],
            r["from_status"] or "(first seen)",
            r["to_status"],
        )
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *table, strict=False)]
    for line in (header, *table):
        print("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    return EXIT_OK


def _iso(ts: Any) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z") if ts is not None else None


def cmd_simulate(args: argparse.Namespace) -> int:
    from watcher.sim import SIM_TOKEN, demo_estate, start_simulator

    async def serve() -> int:
        sim = await start_simulator(demo_estate(), host=args.host, port=args.port, tls=args.tls)
        sim.max_recorded = 1000  # keep memory flat however long it runs
        print(f"simulator listening on {sim.url}", flush=True)
        print(f"bearer token: {SIM_TOKEN}  (e.g. export BACKUP_WATCHER_SIM_TOKEN={SIM_TOKEN})", flush=True)
        if sim.ca_file:
            print(f"CA certificate: {sim.ca_file}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await sim.close()
        return EXIT_OK

    return asyncio.run(serve())
