"""The training steps a run executes, each writing its own part of the run folder: `ner` (the
tagger's folds, word probabilities, naive and tuned decoding), `gbdt` (the span-level second
stages, ner-constrained and gbdt) and `agent` (segments, BC, PPO and the episode trainer)."""
