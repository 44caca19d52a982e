"""The shape of the public API: functional ops at the top level, Modules in logitlab.nn."""

import inspect

import torch

import logitlab
from logitlab import functional, nn, registry


def test_every_functional_op_is_exported_at_the_top_level():
    for name in functional.__all__:
        assert getattr(logitlab, name) is getattr(functional, name), name
        assert name in logitlab.__all__, name
    for name in logitlab.__all__:
        assert hasattr(logitlab, name), name


def test_modules_live_in_nn_only():
    for name in nn.__all__:
        cls = getattr(nn, name)
        assert issubclass(cls, torch.nn.Module), name
        assert not hasattr(logitlab, name), f"{name} should be reached as logitlab.nn.{name}"


def test_registry_names_resolve_to_public_functions_and_modules():
    for spec in list(registry.NORMALIZERS.values()) + list(registry.LOSSES.values()):
        fn = registry.resolve(spec.fn)
        assert fn.__name__ in functional.__all__, spec.fn
        assert spec.module in nn.__all__, spec.module
    for spec in registry.NORMALIZERS.values():
        if spec.regularizer:
            assert registry.resolve(spec.regularizer).__name__ in functional.__all__


def test_public_functions_are_documented_with_an_example():
    for name in functional.__all__:
        obj = getattr(functional, name)
        if inspect.isfunction(obj):
            doc = inspect.getdoc(obj) or ""
            assert ">>>" in doc, f"{name} has no doctested example"
