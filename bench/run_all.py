"""Run every benchmark script in turn and print their figures (`make bench`).

Each script measures its own baseline in the same run; this only sequences
them. Kernel and Envoy benchmarks need root; cluster needs /usr/bin/etcd
(no root, no kernel). Pass names to run a subset:
    .venv/bin/python bench/run_all.py compile xds
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ("compile", "cli", "cidr", "xds", "datapath", "attach", "conntrack", "upstream_ports", "agent", "cluster", "e2e", "k8s", "flood", "dns")


def main(argv: list[str]) -> int:
    wanted = argv or list(ORDER)
    failed = []
    for name in wanted:
        script = HERE / f"bench_{name}.py"
        if not script.exists():
            print(f"== {name}: no such benchmark ({script.name})")
            failed.append(name)
            continue
        print(f"\n== bench_{name}.py", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call([sys.executable, str(script)], cwd=HERE.parent)
        print(f"== bench_{name}.py exit {rc} after {time.monotonic() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
