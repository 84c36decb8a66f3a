"""Validate once: Python checks only that stride, padding, kernel_size and size are ints the bindings' int64 holds;
their ranges are checked in dispatch, so the functional API and a direct _C call raise the same ValueError."""
import re

import numpy as np
import pytest

import vggcore as vc
import vggcore.nn.functional as F

C = vc._C


def _x():
    return vc.tensor(np.ones((1, 6, 6, 3), np.float32))


def _w():
    return vc.tensor(np.ones((2, 3, 3, 3), np.float32))


# (functional call, the same op straight into the binding, the message dispatch gives)
CASES = {
    "conv2d-stride": (lambda: F.conv2d(_x(), _w(), stride=0),
                      lambda: C.conv2d_forward(_x()._data, _w()._data, None, 0, 0),
                      "conv2d: stride must be >= 1, got 0"),
    "conv2d-padding": (lambda: F.conv2d(_x(), _w(), padding=-1),
                       lambda: C.conv2d_forward(_x()._data, _w()._data, None, 1, -1),
                       "conv2d: padding must be >= 0, got -1"),
    "max_pool2d-kernel": (lambda: F.max_pool2d(_x(), 0, 1),
                          lambda: C.max_pool2d_forward(_x()._data, 0, 1),
                          "max_pool2d: kernel_size must be >= 1, got 0"),
    "avg_pool2d-stride": (lambda: F.avg_pool2d(_x(), 2, -3),
                          lambda: C.avg_pool2d_forward(_x()._data, 2, -3),
                          "avg_pool2d: stride must be >= 1, got -3"),
    "lrn-size": (lambda: F.local_response_norm(_x(), size=0),
                 lambda: C.lrn_forward(_x()._data, 0, 1e-4, 0.75, 1.0),
                 "local_response_norm: size must be >= 1, got 0"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_range_error_is_dispatch_s_whichever_way_the_op_is_called(case):
    functional, binding, message = CASES[case]
    with pytest.raises(ValueError) as from_python:
        functional()
    with pytest.raises(ValueError) as from_binding:
        binding()
    assert str(from_python.value) == str(from_binding.value)
    assert str(from_python.value).startswith(message), str(from_python.value)


@pytest.mark.parametrize("value, bound", [(2**63, "< 2**63"), (-2**63 - 1, ">= -2**63")])
def test_an_int_beyond_int64_is_refused_by_name_in_python(value, bound):
    with pytest.raises(ValueError, match=r"^conv2d: stride must be " + re.escape(bound)):
        F.conv2d(_x(), _w(), stride=value)
