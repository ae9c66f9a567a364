"""`ciliate policy test`: flows with expected verdicts, run through trace
against a policy set; a table, exit 1 on a mismatch, JUnit XML for CI, and
a bad test file named by file, field and reason."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.policy.policytest_helpers import run_cli
from policy.load import load_paths

ROOT = Path(__file__).resolve().parents[2]
STARWARS_TESTS = ROOT / "examples" / "starwars" / "policy-tests.yaml"


run = run_cli


def write(tmp_path: Path, body: str, policies: str = "[../examples/starwars/2-l7.yaml]") -> Path:
    f = tmp_path / "t.yaml"
    text = (f"apiVersion: ciliate.io/v1\nkind: PolicyTest\nmetadata: {{name: mine}}\n"
            f"spec:\n  policies: {policies}\n  tests:\n{body}")
    f.write_text(text.replace("../examples", str(ROOT / "examples")))
    return f


def test_the_starwars_examples_tests_pass(capsys):
    code, out, _ = run(capsys, "policy", "test", str(STARWARS_TESTS))
    assert code == 0, out
    assert "6 passed, 0 failed" in out


def test_a_wrong_expectation_fails_with_the_reason_and_junit_says_so(capsys, tmp_path):
    f = write(tmp_path, """  - name: xwing lands
    from: {labels: {org: alliance, class: xwing}}
    to: {labels: {org: empire, class: deathstar}}
    port: 80
    http: {method: POST, path: /v1/request-landing}
    expect: allowed
  - name: tiefighter lands
    from: {labels: {org: empire, class: tiefighter}}
    to: {labels: {org: empire, class: deathstar}}
    port: 80
    http: {method: POST, path: /v1/request-landing}
    expect: allowed
""")
    junit = tmp_path / "junit.xml"
    code, out, _ = run(capsys, "policy", "test", str(f), "--junit", str(junit))
    assert code == 1
    assert "FAIL  xwing lands" in out and "PASS  tiefighter lands" in out and "1 passed, 1 failed" in out
    assert "no rule allows peer" in out  # trace's reason
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "2" and suite.get("failures") == "1"
    [failed] = [c for c in suite.findall("testcase") if c.find("failure") is not None]
    assert failed.get("name") == "xwing lands"
    assert failed.find("failure").get("message") == "expected allowed, got denied"


def test_dns_queries_and_names_are_tested_too(capsys, tmp_path):
    f = write(tmp_path, """  - name: the uploader may ask for its storage
    from: {labels: {app: uploader}}
    to: {labels: {k8s-app: kube-dns, io.kubernetes.pod.namespace: kube-system}}
    port: 53
    protocol: UDP
    dns: storage.example.com
    expect: allowed
  - name: but not for anything else
    from: {labels: {app: uploader}}
    to: {labels: {k8s-app: kube-dns, io.kubernetes.pod.namespace: kube-system}}
    port: 53
    protocol: UDP
    dns: evil.org
    expect: denied
  - name: and reaches what the name resolved to
    from: {labels: {app: uploader}}
    to: {ip: 203.0.113.7}
    port: 443
    resolve: {storage.example.com: [203.0.113.7]}
    expect: allowed
  - name: nothing before
    from: {labels: {app: uploader}}
    to: {ip: 203.0.113.7}
    port: 443
    expect: denied
""", policies="[../examples/cilium/dns-fqdn.yaml]")
    code, out, _ = run(capsys, "policy", "test", str(f))
    assert code == 0, out


@pytest.mark.parametrize("body, field, why", [
    ("  - name: n\n    from: {labels: {a: b}}\n    to: {ip: 1.2.3.4}\n    port: 80\n", "spec.tests[0].expect", "required"),
    ("  - name: n\n    from: {labels: {a: b}, ip: 1.2.3.4}\n    to: {ip: 1.2.3.4}\n    port: 80\n    expect: allowed\n",
     "spec.tests[0].from", "exactly one of labels, ip and entity"),
    ("  - name: n\n    from: {labels: {a: b}}\n    to: {ip: 1.2.3.4}\n    port: 80\n    protocol: XTP\n    expect: allowed\n",
     "spec.tests[0].protocol", "unknown protocol"),
    ("  - name: n\n    from: {labels: {a: b}}\n    to: {ip: 1.2.3.4}\n    port: 80\n    expect: maybe\n",
     "spec.tests[0].expect", "allowed"),
])
def test_a_bad_test_file_names_file_field_and_reason(capsys, tmp_path, body, field, why):
    f = write(tmp_path, body)
    code, _, err = run(capsys, "policy", "test", str(f))
    assert code == 2
    assert f"{f}: {field}: " in err and why in err, err


def test_a_policy_test_beside_policies_is_skipped_by_the_loader():
    res = load_paths([ROOT / "examples" / "starwars"])
    assert res.ok, [str(e) for e in res.errors]
    assert str(STARWARS_TESTS) in res.files and {p.name for p in res.policies} == {"rule1"}
