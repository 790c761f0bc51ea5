"""The map double cannot drift from the real maps: every call the Programmer
may make (lbd.dataplane.maps.MapWriter) exists on Datapath and on FakeMaps
with the same signature, and both are MapWriters."""
import inspect

import pytest

from lbd.dataplane.maps import Datapath, MapWriter
from tests.unit.fakes import FakeMaps

pytestmark = pytest.mark.unit

CALLS = sorted(name for name, value in vars(MapWriter).items()
               if callable(value) and not name.startswith("_"))


def test_the_protocol_lists_the_programmers_calls():
    assert {"set_backend", "write_rings", "vip_ids", "backend_entries"} <= set(CALLS)


@pytest.mark.parametrize("name", CALLS)
def test_datapath_and_the_fake_have_each_call_with_the_protocols_signature(name):
    wanted = inspect.signature(getattr(MapWriter, name))
    assert inspect.signature(getattr(Datapath, name)) == wanted
    assert inspect.signature(getattr(FakeMaps, name)) == wanted


def test_the_fake_is_a_map_writer():
    assert isinstance(FakeMaps(), MapWriter)
    assert "limits" in MapWriter.__annotations__ and hasattr(FakeMaps(), "limits")
