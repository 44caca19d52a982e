import pytest

from logitlab import registry


def test_tables_are_consistent():
    for name, spec in registry.NORMALIZERS.items():
        assert spec.name == name
    for name, spec in registry.LOSSES.items():
        assert spec.name == name
        assert spec.target in ("index", "probs", "both")
        assert set(spec.normalizers) <= set(registry.NORMALIZERS)


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match="unknown normalizer 'softmaxx'; expected one of: .*softmax"):
        registry.get_normalizer("softmaxx")
    with pytest.raises(ValueError, match="not defined for normalizer 'sigmoid'"):
        registry.make_objective("sigmoid", "cross_entropy")


def test_valid_pairs_cover_the_study_grid():
    pairs = set(registry.valid_pairs(index_targets=True))
    for pair in [("softmax", "cross_entropy"), ("softmax", "brier"), ("softmax", "focal"),
                 ("sigmoid", "binary_cross_entropy"), ("standard", "kl"), ("spherical_softmax", "kl"),
                 ("taylor_softmax", "kl"), ("sparsemax", "sparsemax_loss"), ("entmax15", "entmax_loss")]:
        assert pair in pairs
