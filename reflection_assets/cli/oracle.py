"""`reflection oracle info` and `oracle ask`: the oracle's (or judge's) settings, their
sources and spend, and one prompt sent through the client."""

from __future__ import annotations

import argparse
import sys

from reflection_assets.cli.common import storage_resource


def _oracle_resource(judge: bool):
    """The oracle's (or judge's) resource, as the definitions give it to the runs."""
    from reflection_assets.definitions import resource

    return resource("judge" if judge else "oracle")


def cmd_oracle_info(args: argparse.Namespace) -> int:
    from reflection_assets.engines.oracle.cache import OracleCache

    settings, sources = _oracle_resource(args.judge).settings_with_sources()
    for name, value in settings.described().items():
        source = sources.get(name)
        print(f"{name:<24}{value!s:<34}{'' if source in (None, 'default') else 'from ' + source}".rstrip())
    source = sources["api_key"]
    print(f"{'api_key':<24}{'set' if settings.api_key else 'not set':<34}{'' if source == 'default' else 'from ' + source}".rstrip())
    print(f"{'prompt profile':<24}{settings.prompt_profile}")
    spend = OracleCache(storage_resource().db()).spend()
    if spend:
        print("\ncached replies by fingerprint:")
        for row in spend:
            print(f"  {row.fingerprint}  {row.model:<30} {row.replies:>8} replies {row.tokens:>12,} tokens  ${row.cost_usd:.4f}")
    return 0


def cmd_oracle_ask(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    resource = _oracle_resource(args.judge)
    client = resource.client(storage_resource())
    messages = ([("system", args.system)] if args.system else []) + [("user", args.text)]
    [reply] = list(client.complete_many([client.request(messages, "ask")]))
    if not reply.ok:
        print(f"reflection: the oracle failed ({reply.error_kind}): {reply.error}", file=sys.stderr)
        return 1
    print(reply.text)
    print(
        f"\n[{'cached' if reply.cached else 'sent'}; finish {reply.finish_reason}; "
        f"{reply.prompt_tokens}+{reply.completion_tokens} tokens; ${reply.cost_usd:.6f}; "
        f"fingerprint {reply.fingerprint}]",
        file=sys.stderr,
    )
    return 0
