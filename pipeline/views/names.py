"""The names `--augment`, `--mix` and `--views` take, without importing the views (or torch): the CLI lists them
in --help and checks a value against them before anything heavy loads. Each mirrors a registry of this package
(tests/test_cli_help.py compares them): a new policy is named here too.
"""
from __future__ import annotations

VIEW_POLICY_NAMES = ("cifar-crop-flip", "identity", "rrc-flip")  # policies.view_policy_names(): VIEW_POLICIES, sorted
MIX_POLICY_NAMES = ("mixup", "cutmix", "ricap")  # mixes.MIX_POLICIES
# store_sets.store_view_specs(): STORE_VIEW_SETS, NAME:K where the set takes a count
STORE_VIEW_SPECS = ("identity", "cifar-crop-flip", "sampled:K", *(f"mix:{name}:K" for name in MIX_POLICY_NAMES))
