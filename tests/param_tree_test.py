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


# --- Reserved names (issue 11): a node that uses them must have its layer's exact structure ------


def _a(*shape):
    return jnp.ones(shape)


@pytest.mark.parametrize(
    "node, problem",
    [
        ({"P": _a(3, 2), "bias": _a(4)}, r"'P' without 'Q'"),
        ({"Q": _a(2, 4)}, r"'Q' without 'P'"),
        ({"P": _a(2, 3, 2), "Q": _a(2, 4)}, r"P has shape \(2, 3, 2\), not 2-D"),
        ({"P": _a(3, 2), "Q": _a(3, 4)}, r"the ranks of P \(3, 2\) and Q \(3, 4\) disagree"),
        ({"P": _a(3, 2), "Q": _a(2, 4), "scale": _a(4)}, r"unknown keys \['scale'\]"),
        ({"P": _a(3, 2), "Q": _a(2, 4), "sub": {"w": _a(2)}}, r"unknown keys \['sub'\]"),
        ({"P": _a(3, 2), "Q": _a(2, 4), "log_alpha": _a(3)}, r"log_alpha has shape \(3,\), expected \(2,\)"),
        ({"P": _a(3, 2), "Q": _a(2, 4), "bias": _a(5)}, r"bias has shape \(5,\), expected \(4,\)"),
        ({"kernel": _a(3, 4), "log_alpha": _a(4)}, r"log_alpha has shape \(4,\), expected \(3,\)"),
        ({"kernel": _a(2, 3, 4), "log_alpha": _a(2)}, r"kernel has shape \(2, 3, 4\), not 2-D"),
        ({"kernel": _a(3, 4), "log_alpha": _a(3), "mask": _a(3)}, r"unknown keys \['mask'\]"),
        ({"kernel": _a(3, 4), "scale": _a(4)}, r"unknown keys \['scale'\]"),
        ({"kernel": _a(3, 4), "bias": _a(3)}, r"bias has shape \(3,\), expected \(4,\)"),
        ({"log_alpha": _a(3)}, r"gate params \['log_alpha'\] with no layer weights"),
        ({"w": _a(3, 4), "log_alpha_mine": _a(3)}, r"gate params \['log_alpha_mine'\] with no layer weights"),
        ({"embedding_0": _a(5, 3)}, r"'embedding_0' without 'projection_0'"),
        ({"embedding_0": _a(5, 3), "projection_0": _a(2, 4)}, r"embedding_0 \(5, 3\) and projection_0 \(2, 4\)"),
        ({"embedding_0": _a(5, 3), "projection_0": _a(3, 4), "log_alpha_1": _a(2)}, r"'log_alpha_1' without"),
        (
            {"embedding_0": _a(5, 3), "projection_0": _a(3, 4), "log_alpha_0": _a(2)},
            r"log_alpha_0 has shape \(2,\), expected \(3,\)",
        ),
        ({"embedding_0": _a(5, 3), "projection_0": _a(3, 4), "scale": _a(4)}, r"unknown keys \['scale'\]"),
    ],
)
def test_a_node_that_misuses_a_reserved_name_is_refused_everywhere(node, problem):
    params = {"blk": {"mine": node}, "fac": _tree()["z_fac"]}
    match = rf"params at 'blk/mine': {problem}.*reserve"
    with pytest.raises(ValueError, match=match):
        list(layer_nodes(params))
    with pytest.raises(ValueError, match=match):
        map_layer_nodes(lambda path, n, layout: n, params)
    for use in (
        lambda: fp.hard_sparsity(params, fp.Plan()),
        lambda: fp.expected_sparsity(params, fp.Plan()),
        lambda: fp.report(params, fp.Plan()),
        lambda: fp.shrink(params, fp.Plan()),
        lambda: fp.spectral_gates(params, 2.5, 8.0),
    ):
        with pytest.raises(ValueError, match=match):
            use()


def test_modules_that_are_no_layers_keep_working():
    params = {
        "dense": {"kernel": _a(3, 4), "bias": _a(4)},  # nn.Dense: the dense layout
        "nobias": {"kernel": _a(3, 4)},
        "norm": {"scale": _a(4), "bias": _a(4)},  # LayerNorm
        "embed": {"embedding": _a(5, 3)},  # nn.Embed
        "conv": {"kernel": _a(3, 3, 2, 4), "bias": _a(4)},  # nn.Conv: a kernel that is not 2-D is no layer
        "tied_softmax": {"bias_0": _a(3), "bias_1": _a(2), "cluster_kernel": _a(4, 1), "cluster_bias": _a(1)},
        "fac": _tree()["z_fac"],
    }
    found = [(path, layout) for path, _, layout in layer_nodes(params)]
    assert found == [("dense", DENSE_LAYOUT), ("fac", FACTORIZED_LAYOUT), ("nobias", DENSE_LAYOUT)]
    rows = fp.report(params, fp.Plan())
    assert sum(r.params for r in rows) == fp.total_params(params) - 2  # the gated layer's gates are no weights
