"""agent: the daemon, REST API, CNI plugin and the `ciliate` CLI."""

import sys as _sys

# httpx imports its command line (click, rich and pygments: ~15 MiB and
# ~40 ms) whenever they are installed, e.g. beside import-linter in a
# development venv. Nothing here runs httpx's CLI; a None entry makes that
# import fail, which httpx handles (it then ships a stub `main`).
_sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
