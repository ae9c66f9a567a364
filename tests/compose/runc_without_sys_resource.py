#!/usr/bin/python3
"""An OCI runtime for dockerd that removes CAP_SYS_RESOURCE, then runs runc.

Some machines (this CI's among them) run every process without
CAP_SYS_RESOURCE, so runc cannot grant it and a `privileged: true` container
fails with "unable to apply caps: operation not permitted". Before `create`
and `run`, this drops that one capability from the bundle's config.json,
and before `exec` (docker exec, healthchecks) from the process spec.
Standard library only: dockerd runs it outside any virtualenv.
"""

import json
import os
import sys

DROP = "CAP_SYS_RESOURCE"


def option(args: list[str], *names: str) -> str | None:
    for i, arg in enumerate(args):
        if arg in names and i + 1 < len(args):
            return args[i + 1]
        for name in names:
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def drop_capability(config_path: str, in_process: bool = False) -> None:
    with open(config_path) as f:
        config = json.load(f)
    process = config if in_process else config.get("process", {})
    caps = process.get("capabilities") or {}
    for key, values in caps.items():
        if isinstance(values, list):
            caps[key] = [c for c in values if c != DROP]
    with open(config_path + ".tmp", "w") as f:
        json.dump(config, f)
    os.replace(config_path + ".tmp", config_path)


def main() -> None:
    args = sys.argv[1:]
    if any(a in ("create", "run") for a in args):
        config = os.path.join(option(args, "--bundle", "-b") or os.getcwd(), "config.json")
        if os.path.exists(config):
            drop_capability(config)
    elif "exec" in args:
        spec = option(args, "--process", "-p")
        if spec and os.path.exists(spec):
            drop_capability(spec, in_process=True)
    os.execvp("runc", ["runc", *args])


if __name__ == "__main__":
    main()
