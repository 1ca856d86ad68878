"""The shared params walk: recognised layer nodes, by path, rebuilt without touching the input."""

import jax.numpy as jnp
import pytest

import flaxprune as fp
from flaxprune.layers import DENSE_LAYOUT, FACTORIZED_LAYOUT, INPUT_GATED_LAYOUT
from flaxprune.param_tree import join_path, layer_nodes, layout_of, map_layer_nodes, node_at


def _tree():
    return {
        "z_fac": {"P": jnp.ones((3, 2)), "Q": jnp.ones((2, 4)), "log_alpha": jnp.zeros(2), "bias": jnp.zeros(4)},
        "block": {"inp": {"kernel": jnp.ones((3, 4)), "log_alpha": jnp.zeros(3)}, "scale": jnp.ones(4)},
        "head": {"kernel": jnp.ones((4, 2))},
        "embed": {"embedding": jnp.ones((5, 3))},
    }


def test_layer_nodes_in_sorted_path_order_with_their_layouts():
    found = [(path, layout) for path, _, layout in layer_nodes(_tree())]
    assert found == [("block/inp", INPUT_GATED_LAYOUT), ("head", DENSE_LAYOUT), ("z_fac", FACTORIZED_LAYOUT)]
    with pytest.raises(ValueError, match="nested mapping"):
        list(layer_nodes([1, 2]))


def test_map_layer_nodes_replaces_removes_and_keeps_the_rest():
    tree = _tree()

    def fn(path, node, layout):
        if layout is FACTORIZED_LAYOUT:
            return None  # removed
        if path == "block/inp":
            return {"kernel": node["kernel"] * 2}
        return node

    out = map_layer_nodes(fn, tree)
    assert list(out) == ["block", "head", "embed"]  # key order kept, the removed node gone
    assert list(out["block"]) == ["inp", "scale"] and set(out["block"]["inp"]) == {"kernel"}
    assert float(out["block"]["inp"]["kernel"][0, 0]) == 2.0
    assert out["head"] is tree["head"] and out["embed"]["embedding"] is tree["embed"]["embedding"]
    assert set(tree["block"]["inp"]) == {"kernel", "log_alpha"} and "z_fac" in tree  # the input is untouched
    assert map_layer_nodes(lambda p, n, lay: None, {"P": jnp.ones((2, 1)), "Q": jnp.ones((1, 2))}) == {}  # root


def test_node_at_and_paths():
    tree = _tree()
    assert node_at(tree, "block/inp") is tree["block"]["inp"]
    assert node_at(tree, "") is tree
    assert node_at(tree, "block/missing") is None and node_at(tree, "block/scale/x") is None
    assert join_path("", "a") == "a" and join_path("a/b", 3) == "a/b/3"
    assert layout_of(tree["embed"]) is None and layout_of(jnp.ones(2)) is None


def test_is_gate_param_is_the_one_rule():
    assert fp.is_gate_param("log_alpha") and fp.is_gate_param("log_alpha_3")
    assert not fp.is_gate_param("kernel") and not fp.is_gate_param("alpha") and not fp.is_gate_param(0)
    assert fp.GATE_PARAM == "log_alpha"
