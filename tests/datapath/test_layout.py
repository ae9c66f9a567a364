"""Python (redirect/layout.py) and C (bpf/lib/layout.h) agree on every map
key/value and event layout; the same asserts are compiled into every
endpoint program, so a drift cannot load."""

from __future__ import annotations

import ctypes

import pytest

from redirect import layout, loader
from redirect.errors import ProgramLoadError


# Compiling with bcc needs the kernel headers set up by the install step and,
# on some kernels, root: treated as a kernel test.
@pytest.mark.privileged
def test_python_and_c_layouts_agree():
    loader.check_layout()


class _WrongPolicyKey(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("identity", ctypes.c_uint16), ("direction", ctypes.c_uint8)]


@pytest.mark.privileged
@pytest.mark.parametrize(
    "mirrors, constants, needle",
    [
        pytest.param({"policy_key": _WrongPolicyKey}, {}, "sizeof(struct policy_key)", id="size"),
        pytest.param({}, {"CT_F_REDIRECT": 8}, "CT_F_REDIRECT", id="constant"),
    ],
)
def test_a_drift_fails_compilation_naming_it(monkeypatch, mirrors, constants, needle):
    monkeypatch.setattr(layout, "MIRRORS", mirrors)
    monkeypatch.setattr(layout, "CONSTANTS", constants)
    with pytest.raises(ProgramLoadError) as exc:
        loader.check_layout()
    assert needle in exc.value.message


def test_event_struct_is_what_the_reader_decodes():
    assert ctypes.sizeof(layout.FlowEventRaw) == 72  # 16-byte addresses: both families
    assert ctypes.sizeof(layout.Ct6Key) == 40 and ctypes.sizeof(layout.Ipcache6Key) == 20
    assert layout.PolicyKey.dport.offset == 10 and ctypes.sizeof(layout.PolicyKey) == 12
