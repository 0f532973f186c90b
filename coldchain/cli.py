"""The ``coldchain`` command line: demo, hub, agent and simulators.

This module and ``coldchain.demo`` are the only places that import every package; each
subcommand imports its side lazily, so a gateway with ``coldchain[agent]`` never loads the hub.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from coldchain.errors import ColdchainError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _run_hub(args: argparse.Namespace) -> int:
    from hub.config import load_hub_config  # noqa: PLC0415
    from hub.runtime import HubRuntime  # noqa: PLC0415

    HubRuntime(load_hub_config(args.config)).run()
    return 0


def _make_token(args: argparse.Namespace) -> int:
    import hashlib  # noqa: PLC0415

    args.scope = args.scope or ["read"]
    token = secrets.token_urlsafe(32)
    digest = hashlib.sha256(token.encode()).hexdigest()
    print(f"token (give it to the client, it is not stored): {token}")
    print("add to the hub config:")
    scopes = ", ".join(f'"{scope}"' for scope in args.scope)
    print(f'[[api.tokens]]\nname = "{args.name}"\nsha256 = "{digest}"\nscopes = [{scopes}]')
    return 0


def _migrate_store(args: argparse.Namespace) -> int:
    from hub.config import load_hub_config  # noqa: PLC0415
    from hub.db import Database  # noqa: PLC0415

    database = Database(load_hub_config(args.config).store.database_url())
    try:
        revision = database.upgrade()
    finally:
        database.dispose()
    print(f"{database.display_url}: schema at revision {revision}")
    return 0


def _verify_audit(args: argparse.Namespace) -> int:
    from hub.audit import verify_chain  # noqa: PLC0415

    target: Path | str = args.db
    if args.config is not None:
        from hub.config import load_hub_config  # noqa: PLC0415

        target = load_hub_config(args.config).store.database_url()
    report = verify_chain(target)
    if report.ok:
        print(f"audit chain intact: {report.entries} entries")
        return 0
    print(f"audit chain BROKEN at entry {report.first_bad_id}: {report.reason}", file=sys.stderr)
    return 1


def _run_receiver(args: argparse.Namespace) -> int:
    from hub.receiver import run_receiver  # noqa: PLC0415

    return run_receiver(args.port, args.secret_file, host=args.host)


def _run_agent(args: argparse.Namespace) -> int:
    from edge_agent.config import load_agent_config  # noqa: PLC0415
    from edge_agent.runtime import Agent  # noqa: PLC0415

    Agent(load_agent_config(args.config)).run_until_signal()
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from coldchain.demo import run_demo  # noqa: PLC0415

    return run_demo(broker_url=args.broker, api_port=args.api_port, duration_s=args.duration)


def _grafana_build(args: argparse.Namespace) -> int:
    from hub.grafana.files import write  # noqa: PLC0415

    changed = write(args.out)
    print(f"{args.out}: {len(changed)} file(s) written" if changed else f"{args.out}: up to date")
    return 0


def _grafana_check(args: argparse.Namespace) -> int:
    from hub.grafana.files import drift  # noqa: PLC0415

    problems = drift(args.dir)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print("regenerate with: coldchain grafana build", file=sys.stderr)
        return 1
    print(f"{args.dir}: matches hub/grafana")
    return 0


def _grafana_push(args: argparse.Namespace) -> int:
    import os  # noqa: PLC0415

    from hub.grafana.push import push  # noqa: PLC0415

    # The environment is the better place: a --token argument is visible in the process list.
    token = args.token or os.environ.get("GRAFANA_TOKEN", "")
    for result in push(args.url, token, args.dir, resend_secrets=args.resend_secrets):
        print(result)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for tests and shell completion)."""
    parser = argparse.ArgumentParser(prog="coldchain", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="run broker, hub, three gateways and their probes in one process")
    demo.add_argument("--broker", metavar="URL", help="use this broker (mqtt://host:port) instead of the embedded one")
    demo.add_argument("--api-port", type=int, default=8000, help="HTTP API port (a free one is used if taken)")
    demo.add_argument("--duration", type=float, metavar="S", help="stop by itself after S seconds")
    demo.set_defaults(handler=_run_demo)

    hub = commands.add_parser("hub", help="the hub: ingest, store, API").add_subparsers(
        dest="hub_command", required=True
    )
    hub_run = hub.add_parser("run", help="run the hub until SIGINT/SIGTERM")
    hub_run.add_argument("--config", type=Path, required=True)
    hub_run.set_defaults(handler=_run_hub)
    hub_token = hub.add_parser("token", help="make an API token and print the config entry holding its hash")
    hub_token.add_argument("--name", default="api-client")
    hub_token.add_argument(
        "--scope",
        action="append",
        choices=["read", "command", "staff", "orders", "metrics"],
        default=None,
        help="repeatable; default read",
    )
    hub_token.set_defaults(handler=_make_token)
    hub_migrate = hub.add_parser("migrate", help="bring the configured store's schema up to date, then exit")
    hub_migrate.add_argument("--config", type=Path, required=True)
    hub_migrate.set_defaults(handler=_migrate_store)
    hub_audit = hub.add_parser("audit-verify", help="check the hash chain of the audit log; exit 1 if broken")
    audit_source = hub_audit.add_mutually_exclusive_group(required=True)
    audit_source.add_argument("--db", type=Path, help="a SQLite store file (opened read-only)")
    audit_source.add_argument("--config", type=Path, help="the hub config whose [store] to verify")
    hub_audit.set_defaults(handler=_verify_audit)

    receiver = commands.add_parser("receiver", help="the reference claim receiver a shop platform would run")
    receiver.add_argument("--port", type=int, default=8090)
    receiver.add_argument("--host", default="127.0.0.1")
    receiver.add_argument("--secret-file", type=Path, required=True, help="the shared HMAC secret (one per line)")
    receiver.set_defaults(handler=_run_receiver)

    agent = commands.add_parser("agent", help="the gateway agent")
    agent.add_argument("--config", type=Path, required=True)
    agent.set_defaults(handler=_run_agent)

    grafana = commands.add_parser("grafana", help="Grafana boards as code: build, check, push").add_subparsers(
        dest="grafana_command", required=True
    )
    grafana_build = grafana.add_parser("build", help="write the boards' JSON and the provisioning files")
    grafana_build.add_argument("--out", type=Path, default=Path("grafana"))
    grafana_build.set_defaults(handler=_grafana_build)
    grafana_check = grafana.add_parser("check", help="exit 1 if the committed files differ from what the code makes")
    grafana_check.add_argument("--dir", type=Path, default=Path("grafana"))
    grafana_check.set_defaults(handler=_grafana_check)
    grafana_push = grafana.add_parser("push", help="create or update folder, datasources and boards in a Grafana")
    grafana_push.add_argument("--url", required=True, help="Grafana's base URL, e.g. http://127.0.0.1:3000")
    grafana_push.add_argument("--token", help="service account token (default: $GRAFANA_TOKEN)")
    grafana_push.add_argument("--dir", type=Path, default=Path("grafana"))
    grafana_push.add_argument(
        "--resend-secrets", action="store_true", help="send datasource secrets even if Grafana has them (rotation)"
    )
    grafana_push.set_defaults(handler=_grafana_push)

    sim = commands.add_parser("sim", help="simulated devices on pseudo-terminals")
    from firmware_sims.cli import add_sim_commands  # noqa: PLC0415

    add_sim_commands(sim.add_subparsers(dest="sim_command", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``coldchain`` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format=LOG_FORMAT, stream=sys.stderr)
    try:
        result: int = args.handler(args)
    except ColdchainError as exc:
        print(f"coldchain: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
