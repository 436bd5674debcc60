#!/usr/bin/env python3
"""Checks that every Busgate metric a Grafana dashboard queries is one a gateway exports.

    python3 tests/tools/dashboard-metrics.py METRICS [DASHBOARD.json ...]

METRICS is a gateway's /metrics output: a URL (http://127.0.0.1:8080/metrics) or a file.
The dashboards default to deploy/grafana/dashboards/*.json. A metric counts as exported when
a sample of it is in the output, or its family's `# TYPE` line is (a family with no sample
yet: a counter or histogram nothing has been recorded in). Only `busgate_*` names are checked
(`up`, `haproxy_*` come from other exporters). Exit 0 when all are there, 1 with the missing
ones listed.
"""

import glob
import json
import os
import re
import sys
import urllib.request

SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def exprs(node):
    """Every `expr` string in a dashboard (panels, rows, templating)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from exprs(item)


def exported(text):
    """(sample names, family names) in an exposition."""
    samples, families = set(), set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            families.add(line.split()[2])
        elif line and not line.startswith("#"):
            samples.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return samples, families


def known(name, samples, families):
    if name in samples or name in families:
        return True
    return any(name.endswith(s) and name[: -len(s)] in families for s in SUFFIXES)


def main(argv):
    if len(argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    source = argv[1]
    if source.startswith("http://") or source.startswith("https://"):
        with urllib.request.urlopen(source, timeout=10) as answer:
            text = answer.read().decode()
    else:
        with open(source, encoding="utf-8") as f:
            text = f.read()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    dashboards = argv[2:] or sorted(glob.glob(os.path.join(root, "deploy/grafana/dashboards/*.json")))
    samples, families = exported(text)
    missing, checked = [], 0
    for path in dashboards:
        with open(path, encoding="utf-8") as f:
            dashboard = json.load(f)
        names = set()
        for expr in exprs(dashboard):
            names.update(re.findall(r"\bbusgate_[a-z0-9_]+", expr))
        for name in sorted(names):
            checked += 1
            if not known(name, samples, families):
                missing.append(f"{os.path.basename(path)}: {name}")
    if missing:
        print("metrics queried by a dashboard but not exported:", file=sys.stderr)
        for m in missing:
            print(f"  {m}", file=sys.stderr)
        return 1
    print(f"{checked} metric names in {len(dashboards)} dashboard(s), all exported")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
