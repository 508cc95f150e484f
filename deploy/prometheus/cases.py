#!/usr/bin/env python3
"""cases.py RULES TESTS README: every alert of RULES has a promtool case in TESTS where it
fires and one where it does not, and a runbook in README (a line starting `- **NAME**`)."""

import sys

import yaml


def main(rules_path, tests_path, readme_path):
    with open(rules_path, encoding="utf-8") as f:
        alerts = [r["alert"] for g in yaml.safe_load(f)["groups"] for r in g["rules"] if "alert" in r]
    with open(tests_path, encoding="utf-8") as f:
        tests = yaml.safe_load(f)["tests"]
    with open(readme_path, encoding="utf-8") as f:
        readme = f.read()
    fires, silent = set(), set()
    for test in tests:
        for case in test.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    errors = []
    for alert in alerts:
        if alert not in fires:
            errors.append(f"{alert}: no case where it fires")
        if alert not in silent:
            errors.append(f"{alert}: no case where it does not fire")
        if f"- **{alert}**" not in readme:
            errors.append(f"{alert}: no runbook line in the README")
    for unknown in sorted((fires | silent) - set(alerts)):
        errors.append(f"{unknown}: tested, but no such alert")
    for error in errors:
        print(error, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
