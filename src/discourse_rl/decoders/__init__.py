"""The decoders layer: everything that turns the tagger's word probabilities into labelled
spans, behind one interface and one registry (`registry`): the naive and tuned decodings
(`decode`), constrained decoding (`constrained`), span-level gradient boosting (`gbdt`), the
essay's candidate segments (`segments`) and the attention agent over them (`agent`: policy,
behavioural cloning, PPO, the episode trainer, the environment)."""
