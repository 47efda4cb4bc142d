"""shopseq's software-defined assets, one module per pipeline stage."""

from assets.cleaned_events import cleaned_events
from assets.features import item_features, ranking_candidates, user_features
from assets.models import MODEL_ASSETS, TRAINING_SET_ASSETS
from assets.promotion import champion_promotion
from assets.raw_events import raw_events
from assets.recommendations import PUBLISHED_ASSETS, next_action_predictions, recommendations
from assets.replay import model_replay
from assets.sequences import sessions, user_sequences

DAILY_ASSETS = [
    raw_events,
    cleaned_events,
    sessions,
    user_sequences,
    user_features,
    item_features,
    ranking_candidates,
]
TRAINING_ASSETS = [*TRAINING_SET_ASSETS, *MODEL_ASSETS, champion_promotion]
SERVING_ASSETS = [recommendations, next_action_predictions, *PUBLISHED_ASSETS]
EVALUATION_ASSETS = [model_replay]
ALL_ASSETS = [*DAILY_ASSETS, *TRAINING_ASSETS, *SERVING_ASSETS, *EVALUATION_ASSETS]
