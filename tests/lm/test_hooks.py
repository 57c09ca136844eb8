"""Hook names: parsing, aliases, forward order, the early-stop layer, and agreement with the config check."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from raysae.config.data import HOOK_PATTERN, ActivationsConfig
from raysae.lm.hooks import BLOCK_SITES, SITE_ORDER, HookError, all_hook_names, parse_hook, stop_layer


def test_parse_block_hooks_and_aliases():
    p = parse_hook("blocks.7.hook_resid_post", n_layers=30)
    assert (p.layer, p.site) == (7, "resid_post")
    assert parse_hook("blocks.2.ln2.hook_in").site == parse_hook("blocks.2.hook_resid_mid").site
    assert parse_hook("blocks.2.mlp.hook_in").site == "ln2_out"
    assert parse_hook("blocks.2.attn.hook_out").site == "attn_out"
    assert parse_hook("hook_embed").layer == -1
    assert parse_hook("ln_final.hook_out", n_layers=30).layer == 30


@pytest.mark.parametrize(
    "bad", ["blocks.3.hook_resid", "blocks.x.hook_resid_post", "resid_post", "blocks.3."]
)
def test_unknown_hook_names_are_errors(bad):
    with pytest.raises(HookError, match="unknown hook point"):
        parse_hook(bad)


def test_layer_out_of_range():
    with pytest.raises(HookError, match=r"layers 0\.\.29"):
        parse_hook("blocks.30.hook_resid_post", n_layers=30)


def test_forward_order_within_a_block():
    names = [f"blocks.4.{alias}" for alias in BLOCK_SITES]
    orders = sorted(parse_hook(n).order for n in names)
    assert [o[1] for o in orders] == sorted(SITE_ORDER.index(BLOCK_SITES[n.split(".", 2)[2]]) for n in names)
    assert parse_hook("blocks.4.hook_resid_post").order < parse_hook("blocks.5.hook_resid_pre").order


def test_stop_layer_is_the_deepest_block():
    assert stop_layer(["blocks.1.hook_resid_post", "blocks.3.hook_mlp_out"], 30) == 3
    assert stop_layer(["hook_embed"], 30) == -1
    assert stop_layer(["ln_final.hook_out"], 30) == 29


def test_config_accepts_exactly_the_model_hook_names():
    names = all_hook_names(4)
    assert all(HOOK_PATTERN.match(n) for n in names)
    assert len(names) == len(set(names)) == 1 + 4 * len(BLOCK_SITES) + 3
    ActivationsConfig(hooks=names[:5])
    with pytest.raises(ValidationError, match="unknown hook point"):
        ActivationsConfig(hooks=["blocks.1.resid_post"])
    with pytest.raises(ValidationError, match="distinct"):
        ActivationsConfig(hooks=["blocks.1.hook_resid_post", "blocks.1.hook_resid_post"])
