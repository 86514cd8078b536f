"""make_mesh, the LWM mesh string, device subsets and the logical-axis rules."""

import jax
import pytest
from jax.sharding import PartitionSpec as P

import ringkit as rk
from ringkit.errors import ConfigError, MeshError, RingkitError


def test_keyword_and_string_forms_agree():
    a = rk.make_mesh(dp=1, fsdp=2, tp=1, sp=-1)
    b = rk.make_mesh("1,2,1,-1")
    assert a.axis_names == b.axis_names == ("dp", "fsdp", "tp", "sp")
    assert dict(a.shape) == dict(b.shape) == {"dp": 1, "fsdp": 2, "tp": 1, "sp": 4}
    assert list(a.devices.flat) == list(b.devices.flat)


def test_default_puts_every_device_on_sp():
    mesh = rk.make_mesh()
    assert mesh.shape["sp"] == jax.device_count() == 8


def test_devices_subset():
    mesh = rk.make_mesh(sp=-1, devices=jax.devices()[2:6])
    assert mesh.shape["sp"] == 4
    assert set(mesh.devices.flat) == set(jax.devices()[2:6])


@pytest.mark.parametrize("spec", ["1,1,3,-1", "2,2,2,2", "1,1,1,16"])
def test_mismatched_product_names_both_numbers(spec):
    with pytest.raises(MeshError) as err:
        rk.make_mesh(spec)
    assert "8" in str(err.value)
    fixed = [int(s) for s in spec.split(",") if s != "-1"]
    product = 1
    for s in fixed:
        product *= s
    assert str(product) in str(err.value)


@pytest.mark.parametrize("spec", ["1,1,1", "a,b,c,d", "1,-1,1,-1", "0,1,1,-1"])
def test_bad_mesh_strings(spec):
    with pytest.raises(RingkitError):
        rk.make_mesh(spec)


def test_bad_sizes_and_devices():
    d = jax.devices()
    for kw in (dict(sp=None), dict(sp="2"), dict(sp=2.5), dict(tp=True)):
        with pytest.raises(MeshError, match="whole numbers"):
            rk.make_mesh(**kw)
    with pytest.raises(MeshError, match="distinct"):
        rk.make_mesh(devices=[d[0], d[0], d[1], d[1]])
    with pytest.raises(MeshError, match="must be jax devices"):
        rk.make_mesh(devices=["x"])
    assert rk.make_mesh(devices=d[0]).size == 1  # one device is a list of one


def test_logical_rules():
    assert rk.logical_to_spec(("batch", "seq", "heads", "head_dim")) == P(("dp", "fsdp"), "sp", "tp", None)
    assert rk.logical_to_spec(("embed", "mlp")) == P("fsdp", "tp")
    assert rk.logical_to_spec(("vocab", "embed")) == P("tp", "fsdp")
    # An activation [batch, seq, embed]: 'fsdp' is taken by batch, so embed stays replicated.
    assert rk.logical_to_spec(("batch", "seq", "embed")) == P(("dp", "fsdp"), "sp", None)
    assert rk.logical_to_spec(("kv_heads",)) == P("tp")


def test_unknown_logical_axis_is_an_error():
    with pytest.raises(ConfigError, match="no sharding rule for logical axis 'bogus'"):
        rk.logical_to_spec(("batch", "bogus"))
