"""The AutoML search space comes from the schema's bounds and the spec's automl.search_space."""

from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from oneformer.errors import SpecError
from oneformer.spec import load_spec
from tasks.search_space import DEFAULT_KEYS, schema_bounds, search_space


def test_default_space_uses_schema_bounds() -> None:
    space = search_space(load_spec(None))
    assert set(space) == set(DEFAULT_KEYS)
    bounds = schema_bounds()
    lr = space["train.optim.lr"]
    assert isinstance(lr, FloatDistribution) and lr.log
    assert (lr.low, lr.high) == (bounds["train.optim.lr"]["min"], bounds["train.optim.lr"]["max"])


def test_narrow_extend_drop_and_choices() -> None:
    spec = load_spec(None, {"automl.search_space": {
        "train.optim.lr": {"min": 1e-4, "max": 1e-3},
        "train.optim.weight_decay": {"enabled": False},
        "model.one_former.dec_layers": {"min": 2, "max": 6},
        "train.optim.lr_scheduler": {"choices": ["Poly", "Cosine"]},
    }})
    space = search_space(spec)
    assert "train.optim.weight_decay" not in space
    assert (space["train.optim.lr"].low, space["train.optim.lr"].high) == (1e-4, 1e-3)
    assert space["train.optim.lr"].log  # the schema's scale is kept when narrowing
    assert isinstance(space["model.one_former.dec_layers"], IntDistribution)
    assert isinstance(space["train.optim.lr_scheduler"], CategoricalDistribution)


@pytest.mark.parametrize(("entry", "message"), [
    ({"train.optim.lr": {"min": 1e-8, "max": 1e-3}}, "must lie within the schema's"),
    ({"train.optim.nope": {"min": 1, "max": 2}}, "train.optim.nope is not a spec key"),
    ({"model.one_former.dec_layers": {"min": 2}}, "give min and max"),
    ({"train.optim.lr": {"low": 1e-4}}, "unknown fields"),
])
def test_bad_entries_name_the_key(entry: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        search_space(load_spec(None, {"automl.search_space": entry}))
