import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from assets.logic.serving import check_features
from resources.registry import ModelRegistry, RegistryUnavailable


def test_an_unreachable_registry_is_a_clear_error_not_a_missing_champion(tmp_path):
    registry = ModelRegistry(home=str(tmp_path), tracking_uri="http://127.0.0.1:9")  # nothing listens on port 9
    with pytest.raises(RegistryUnavailable, match=r"alias 'champion' of 'm'.* at http://127.0.0.1:9 did not answer"):
        registry.version_for_alias("m", "champion")


def test_a_model_trained_on_other_features_is_refused():
    frame = pd.DataFrame(np.random.default_rng(0).uniform(size=(200, 2)), columns=["a", "b"])
    booster = lgb.train({"objective": "binary", "verbosity": -1}, lgb.Dataset(frame, (frame["a"] > 0.5).astype(int)), 3)
    check_features(booster, ["a", "b"], "m v1")
    with pytest.raises(ValueError, match=r"m v1 expects other features .*'c'"):
        check_features(booster, ["a", "b", "c"], "m v1")
