"""The SIMT emulator's self-test kernels: the test-only module vggcore._simt_selftest (never imported by vggcore)."""
import pytest

S = pytest.importorskip("vggcore._simt_selftest")
