"""Agent fixtures: an Agent wired to in-memory fakes in a temporary state dir."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

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
