"""`ciliate policy test FILE...`: run policy tests (policy/flow_tests.py)
against a policy set; a table, and exit 1 on any mismatch. `--junit FILE`
writes JUnit XML for CI systems."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from policy.errors import CiliateError, PolicyErrors
from agent.cli.parse_cache import load_policies
from policy.load import MAX_DOCUMENT_BYTES, LoadResult, is_test_document, read_policy_file, yaml_documents

if TYPE_CHECKING:
    import xml.etree.ElementTree as ET

    from policy.flow_tests import Outcome

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def add_parser(psub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    t = psub.add_parser(
        "test",
        help="check flows against the verdicts a policy test file expects",
        description=("FILE: a YAML policy test (apiVersion ciliate.io/v1, kind PolicyTest). Each test is traced "
                     "against the policies of spec.policies (relative to the file) and --policies. "
                     "Exit 0 all pass, 1 a test failed, 2 bad input."),
    )
    t.add_argument("files", nargs="+", metavar="FILE")
    t.add_argument("--policies", nargs="+", action="extend", default=[], metavar="PATH",
                   help="policies to test, added to each file's spec.policies")
    t.add_argument("--junit", metavar="FILE", help="also write the results as JUnit XML")
    t.add_argument("-o", "--output", choices=("text", "json"), default="text")
    t.set_defaults(func=run)


def _documents(path: Path) -> list:
    out = LoadResult()
    text = read_policy_file(path, out)
    if text is None:
        raise CiliateError(str(out.errors[0]))
    try:
        docs = [d for d in yaml_documents(text, MAX_DOCUMENT_BYTES) if d is not None]
    except Exception as e:  # noqa: BLE001 - YAML errors and absurd nesting alike: one line
        raise CiliateError(f"{path}: unreadable: {e}") from None
    tests = [d for d in docs if is_test_document(d)]
    if not tests:
        raise CiliateError(f"{path}: no PolicyTest document (apiVersion: ciliate.io/v1, kind: PolicyTest)")
    return tests


def run(args: argparse.Namespace) -> int:
    # Imported here: `ciliate policy trace` registers this command too.
    from policy.flow_tests import parse_test_document, run_case

    suites: list[tuple[str, list["Outcome"]]] = []
    try:
        for name in args.files:
            path = Path(name)
            for doc in _documents(path):
                test = parse_test_document(doc, str(path))
                paths = [str(path.parent / p) for p in test.spec.policies] + list(args.policies)
                if not paths:
                    raise CiliateError(f"{path}: spec.policies is empty and no --policies given: nothing to test")
                res = load_policies(paths)
                if not res.ok:
                    for e in res.errors:
                        print(str(e), file=sys.stderr)
                    raise CiliateError(f"{len(res.errors)} policy error(s); fix them first (ciliate policy validate)")
                suites.append((test.metadata.name, [run_case(res.policies, c) for c in test.spec.tests]))
    except PolicyErrors as e:
        for err in e.errors:
            print(str(err), file=sys.stderr)
        return EXIT_BAD_INPUT
    except CiliateError as e:
        print(f"ciliate: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.junit:
        _junit(suites).write(args.junit, encoding="utf-8", xml_declaration=True)
    failed = sum(not o.passed for _, outs in suites for o in outs)
    if args.output == "json":
        print(json.dumps({"suites": [{"name": n, "tests": [_row(o) for o in outs]} for n, outs in suites],
                          "failed": failed}, indent=2))
    else:
        _print(suites, failed)
    return EXIT_FAILED if failed else EXIT_OK


def _row(o: "Outcome") -> dict:
    return {"name": o.case.name, "flow": o.case.flow(), "expect": o.case.expect, "got": o.got,
            "passed": o.passed, "reason": o.reason}


def _print(suites: list[tuple[str, list["Outcome"]]], failed: int) -> None:
    total = 0
    for name, outs in suites:
        print(f"{name}:")
        for o in outs:
            total += 1
            mark = "PASS" if o.passed else "FAIL"
            print(f"  {mark}  {o.case.name}: {o.case.flow()}: expected {o.case.expect}, got {o.got}")
            if not o.passed:
                print(f"        {o.reason}")
    print(f"{total - failed} passed, {failed} failed")


def _junit(suites: list[tuple[str, list["Outcome"]]]) -> "ET.ElementTree":
    import xml.etree.ElementTree as ET

    root = ET.Element("testsuites")
    for name, outs in suites:
        failures = sum(not o.passed and o.got != "error" for o in outs)
        errors = sum(o.got == "error" for o in outs)
        suite = ET.SubElement(root, "testsuite", name=name, tests=str(len(outs)), failures=str(failures),
                              errors=str(errors))
        for o in outs:
            case = ET.SubElement(suite, "testcase", classname=name, name=o.case.name)
            if o.got == "error":
                ET.SubElement(case, "error", message=o.reason).text = o.case.flow()
            elif not o.passed:
                ET.SubElement(case, "failure", message=f"expected {o.case.expect}, got {o.got}").text = (
                    f"{o.case.flow()}\n{o.reason}")
    return ET.ElementTree(root)
