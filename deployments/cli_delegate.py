"""`prefillshare` subcommands that belong to other modules' command lines (training, bench,
k8s, observability): each module keeps its own argparse and ``main(argv) -> int``; this runs it
under the one CLI's exit-code contract. Runs in the CLI process.

Exit codes: 0 ok, 1 runtime failure, 2 bad usage or config. argparse already exits 2 on bad
usage and 0 after --help; a module's config errors (pydantic, missing files, bad YAML) become
2 here, anything else that escapes it 1 (with its traceback: a failure to debug).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from deployments.exit_codes import EXIT_FAILED, EXIT_USAGE


@dataclass(frozen=True)
class Delegated:
    module: str  # has main(argv: list[str] | None) -> int
    help: str
    leading: tuple[str, ...] = ()  # argv the module needs before the user's (its own subcommand)


def run(name: str, target: Delegated, argv: list[str]) -> int:
    from pydantic import ValidationError
    from yaml import YAMLError

    try:
        module = _import(target.module)
        return int(module.main([*target.leading, *argv]) or 0)
    except SystemExit as exc:  # argparse: 0 after --help, 2 on bad usage
        code = exc.code
        if code is None or isinstance(code, int):
            return int(code or 0)
        print(f"prefillshare {name}: {code}", file=sys.stderr)
        return EXIT_FAILED
    except (ValidationError, YAMLError, FileNotFoundError, ValueError) as exc:
        print(f"prefillshare {name}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"prefillshare {name}: interrupted", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 -- the contract: any failure is exit 1
        traceback.print_exc()
        print(f"prefillshare {name}: failed: {exc}", file=sys.stderr)
        return EXIT_FAILED


SOURCE_ONLY = ("bench",)  # in the repository, not in the installed package


def _import(name: str) -> object:
    """The module behind a command. bench/ is not installed with the package (the product
    never imports it): its commands run from a checkout, whose root is then put on the path."""
    top = name.split(".")[0]
    if top in SOURCE_ONLY and importlib.util.find_spec(top) is None:
        checkout = Path.cwd()
        if not (checkout / top / "__init__.py").exists():
            raise FileNotFoundError(f"{top}/ ships with the source, not the package: run this "
                                    "command from the root of a checkout of the repository")
        sys.path.insert(0, str(checkout))
    return importlib.import_module(name)


def add_parsers(sub: argparse._SubParsersAction, commands: dict[str, Delegated],
                groups: dict[str, dict[str, Delegated]]) -> None:
    """Listed for `prefillshare --help`; main() hands the rest of the line to the module, so
    `prefillshare NAME --help` is the module's own help."""
    for name, target in commands.items():
        sub.add_parser(name, help=target.help, description=target.help, add_help=False)
    for group, members in groups.items():
        g = sub.add_parser(group, help=f"{group}: {', '.join(members)}",
                           description=f"`prefillshare {group} NAME --help` for each.")
        inner = g.add_subparsers(dest=f"{group}_command", required=True, metavar="NAME")
        for name, target in members.items():
            inner.add_parser(name, help=target.help, description=target.help, add_help=False)


def dispatch(argv: list[str], commands: dict[str, Delegated],
             groups: dict[str, dict[str, Delegated]]) -> int | None:
    """Runs a delegated command line; None when ``argv`` is not one (argparse takes it)."""
    if argv and argv[0] in commands:
        return run(argv[0], commands[argv[0]], argv[1:])
    if len(argv) > 1 and argv[0] in groups and argv[1] in groups[argv[0]]:
        return run(f"{argv[0]} {argv[1]}", groups[argv[0]][argv[1]], argv[2:])
    return None
