"""The NER stage: a transformer tags each word with one of 15 labels (O, B-/I- per class).

Two ways to train share the model side:

* ``mode = "frozen"``: the encoder runs once over every essay; each word's vector (the mean of its
  sub-tokens' hidden states, averaged over the overlapping windows that see it) is cached, and a
  small head (a BiGRU over the essay's sentences or words, plus word features) is trained per
  fold on the cache. This is what fits the 2-core CPU budget.
* ``mode = "finetune"``: encoder and head are trained end to end on windows with the
  transformers Trainer; window probabilities are averaged per word. The path for GPUs and
  larger backbones.

Modules, by job:

* `config`    `NerConfig`, the `[ner]` table
* `backbone`  the Hugging Face backbone: loading, dropout, special tokens, layer names (the
              BERT-style assumptions live here only)
* `tokens`    word features, sub-tokens aligned with words, paragraph markers, windows, batches
* `model`     word pooling, the head, encoder + head (`NerModel`)
* `inference` word vectors and word probabilities in batches, bf16 copies, shared frozen layers
* `run`       the stage's files in a run folder: settings record, folds, fold models
* `predict`   `NerPredictor`: load a run's models once, predict new essays
* `frozen`    frozen-mode training: the encoder cache and a head per fold
* `finetune`  finetune-mode training with the transformers Trainer
* `stage`     the whole tagger: folds, training, out-of-fold and test probabilities
"""

from discourse_rl.ner.backbone import resolve_backbone
from discourse_rl.ner.config import NerConfig
from discourse_rl.ner.predict import NerPredictor, predict_word_probs
from discourse_rl.ner.run import NerRecord, run_ner_config
from discourse_rl.ner.stage import NerResult, train_ner

__all__ = [
    "NerConfig",
    "NerPredictor",
    "NerRecord",
    "NerResult",
    "predict_word_probs",
    "resolve_backbone",
    "run_ner_config",
    "train_ner",
]
