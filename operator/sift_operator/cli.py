"""``sift-operator``: print generated manifests; the controller itself arrives with the operator."""

from __future__ import annotations

import argparse
import sys

from sift_operator.crd import render_crd_yaml
from sift_operator.reference import render_reference


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sift-operator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("crd", help="print the SelectionRun CustomResourceDefinition (YAML)")
    sub.add_parser("reference", help="print the SelectionRun field reference (Markdown)")
    sub.add_parser("run", help="run the operator (not supported yet)")
    args = parser.parse_args(argv)
    if args.command == "crd":
        sys.stdout.write(render_crd_yaml())
    elif args.command == "reference":
        sys.stdout.write(render_reference())
    else:
        print(
            "sift-operator run: not supported yet (the controller is a later release)",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
