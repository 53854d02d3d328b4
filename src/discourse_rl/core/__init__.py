"""The bottom layer: what every other layer stands on.

Essay data (`data`: the Corpus, reading the Kaggle layout), the competition metric and the
per-essay scores (`metric`), typed arrays (`arrays`), config rules (`rules`), atomic file
writing and errors (`common`), the names of a run folder's paths (`layout`), file manifests
(`artefacts`), the held-out protocol every second stage shares (`protocol`) and the records
the stages write (`records`). Nothing here imports torch or another layer.
"""
