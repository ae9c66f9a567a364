"""Agent fixtures: an Agent wired to in-memory fakes in a temporary state dir."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.cli import log_setup
from agent.cli.ciliate import main
from agent.daemon import Agent, AgentConfig, build_agent
from tests.agent.fakes import FakeCompiler, FakeDatapath, FakeLoader, FakeProxy, compiler_factory


@dataclass
class Rig:
    tmp: Path
    datapath: FakeDatapath = field(default_factory=FakeDatapath)
    proxy: FakeProxy = field(default_factory=FakeProxy)
    loader: FakeLoader = field(default_factory=FakeLoader)
    compilers: list[FakeCompiler] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return self.tmp / "state"

    @property
    def policy_dir(self) -> Path:
        return self.tmp / "policies"

    @property
    def socket(self) -> Path:
        return self.tmp / "state" / "agent.sock"

    @property
    def compiler(self) -> FakeCompiler:
        return self.compilers[-1]

    def agent(self, **overrides) -> Agent:
        cfg = dict(state_dir=self.state_dir, policy_dir=self.policy_dir, metrics_port=None, poll_interval=3600.0, settle=0.0)  # tests poll explicitly
        cfg.update(overrides)
        return build_agent(
            AgentConfig(**cfg),
            compiler_factory=compiler_factory(self.compilers),
            loader=self.loader,
            datapath=self.datapath,
            proxy=self.proxy,
        )

    def write_policy(self, name: str, docs: object) -> Path:
        self.policy_dir.mkdir(parents=True, exist_ok=True)
        path = self.policy_dir / name
        tmp = path.with_name("." + name)
        tmp.write_text(docs if isinstance(docs, str) else json.dumps(docs))
        tmp.replace(path)  # atomic, as editors and ConfigMaps do: a new inode
        return path


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    (tmp_path / "policies").mkdir()
    return Rig(tmp_path)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put back the root logger and the chatty loggers' levels that
    `ciliate agent` (log_setup.configure) changes in this process."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    chatty = {n: logging.getLogger(n).level for n in log_setup.CHATTY}
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    for n, lvl in chatty.items():
        logging.getLogger(n).setLevel(lvl)


@dataclass
class Run:
    returncode: int
    stderr: str


@pytest.fixture
def agent_cli(capsys: pytest.CaptureFixture[str], restore_logging: None) -> Iterator[Callable[..., Run]]:
    """`ciliate agent --state-dir ... --bpf-dir ... FLAGS` through the CLI's
    own main in this process: what is checked is flag handling, which needs
    no interpreter of its own (a subprocess cost ~2 s of imports each).
    `ciliate agent` sets the process's umask and the root logger before it
    reads the flags; both are put back after the test."""
    umask = os.umask(0o022)
    os.umask(umask)

    def run(tmp_path: Path, *flags: str) -> Run:
        capsys.readouterr()
        try:
            code = main(["agent", "--state-dir", str(tmp_path / "state"), "--bpf-dir", str(tmp_path / "bpf"), *flags])
        except SystemExit as exc:  # argparse's own refusals
            code = exc.code if isinstance(exc.code, int) else 1
        return Run(code, capsys.readouterr().err)

    try:
        yield run
    finally:
        os.umask(umask)
