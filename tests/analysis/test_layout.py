"""FeatureLayout is a snapshot of what the dictionary says about its groups, for every architecture."""

from __future__ import annotations

import pickle

import pytest

from raysae.analysis.layout import FeatureLayout
from raysae.dictionaries import build_dictionary

HOOKS = [f"blocks.{i}.hook_resid_post" for i in range(3)]
CONFIGS = {
    "sae": {"architecture": "sae", "hook_point_in": HOOKS[0]},
    "clt": {
        "architecture": "clt",
        "hook_points_in": [f"blocks.{i}.hook_mlp_in" for i in range(3)],
        "hook_points_out": [f"blocks.{i}.hook_mlp_out" for i in range(3)],
    },
    "crosscoder": {"architecture": "crosscoder", "hook_points": HOOKS},
}


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_layout_copies_the_dictionary_answers(arch):
    d = build_dictionary({"d_model": 16, "d_sae": 8, "act_fn": "relu", **CONFIGS[arch]})
    layout = FeatureLayout.of(d)
    assert layout.groups == d.n_groups and layout.n_features == d.n_features == d.n_groups * 8
    assert layout.hooks() == d.feature_hooks() == [d.group_hook(g) for g in range(d.n_groups)]
    assert [layout.layer(g) for g in range(d.n_groups)] == [d.group_layer(g) for g in range(d.n_groups)]
    assert layout.layers == (3 if arch == "clt" else None)
    assert pickle.loads(pickle.dumps(layout)) == layout  # it travels with partial results


def test_a_layout_with_wrong_group_counts_is_refused():
    with pytest.raises(ValueError, match="needs that many group hooks"):
        FeatureLayout("sae", (HOOKS[0],), (HOOKS[0],), 8, 2, group_hooks=(HOOKS[0],), group_layers=(None,))
