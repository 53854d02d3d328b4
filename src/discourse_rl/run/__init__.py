"""The run layer: training a run folder.

The pipeline (the training steps in order, their keys, reuse, the run loop), the training steps
themselves (`steps`: the tagger's folds, the span-level second stages, the agent), the run's
report and plots (`results`) and the data report (`report`).
"""
