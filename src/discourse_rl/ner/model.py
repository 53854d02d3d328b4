"""The tagger: word pooling, the head over an essay's words, and encoder + head end to end."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.data import NUM_LABELS
from discourse_rl.ner.backbone import encoder_inputs, hidden_size
from discourse_rl.ner.config import NerConfig
from discourse_rl.ner.tokens import N_WORD_FEATURES


# Model
def pool_words(hidden: torch.Tensor, token_word: torch.Tensor, n_words: int) -> torch.Tensor:
    """(B, T, H) sub-token states -> (B, n_words, H) means; tokens with index -1 are skipped."""
    b, _, h = hidden.shape
    keep = token_word >= 0
    flat = torch.where(
        keep, token_word + n_words * torch.arange(b, device=token_word.device)[:, None], b * n_words
    )
    sums = hidden.new_zeros(b * n_words + 1, h).index_add_(
        0, flat.reshape(-1), hidden.reshape(-1, h)
    )
    counts = hidden.new_zeros(b * n_words + 1).index_add_(
        0, flat.reshape(-1), keep.reshape(-1).to(hidden.dtype)
    )
    means = sums[:-1] / counts[:-1].clamp(min=1)[:, None]
    return means.view(b, n_words, h)


HEADS = ("sentence", "gru", "mlp")


class NerHead(nn.Module):
    """Word vectors (+ features) -> 15 label logits per word.

    'sentence': a BiGRU over the essay's sentences (means of their words) gives every word its
    sentence's role in the essay; ~20x fewer recurrent steps than 'gru' over words, which matters
    on a CPU. 'gru': a BiGRU over words. 'mlp': each word alone.
    """

    label_weights: torch.Tensor

    def __init__(self, in_dim: int, cfg: NerConfig) -> None:
        super().__init__()
        if cfg.head not in HEADS:
            raise DiscourseRLError(f"ner.head: expected one of {HEADS}, got {cfg.head!r}")
        n_feat = N_WORD_FEATURES if cfg.word_features else 0
        hid = cfg.head_hidden
        self.kind = cfg.head
        self.drop = nn.Dropout(cfg.dropout)
        # Two projections summed instead of one over a concatenation, and dropout only after
        # projecting: both the copy and the dropout mask over the wide input were most of the
        # head's CPU time.
        self.proj = nn.Linear(in_dim, hid)
        self.proj_feat = nn.Linear(n_feat, hid, bias=False) if n_feat else None
        # One GRU per direction and layer: the backward one reads each sequence reversed within
        # its own length, so padding never leaks in (packed sequences are far slower on CPU).
        self.rnn = nn.ModuleList()
        if cfg.head != "mlp":
            for layer in range(cfg.head_layers):
                size = hid * (1 if layer == 0 else 2)
                self.rnn.extend([nn.GRU(size, hid, batch_first=True) for _ in range(2)])
        out_dim = {"mlp": hid, "gru": 2 * hid, "sentence": 3 * hid}[cfg.head]
        self.mix: nn.Module = nn.Sequential(nn.Linear(out_dim, hid), nn.GELU())
        if cfg.word_conv > 1:
            width = cfg.word_conv | 1  # odd, so that the output stays aligned with the words
            self.mix = nn.Conv1d(out_dim, hid, width, padding=width // 2)
        self.out = nn.Linear(hid, NUM_LABELS)
        weights = torch.ones(NUM_LABELS)
        weights[1::2] = cfg.b_weight
        self.register_buffer("label_weights", weights, persistent=False)

    def forward(
        self, vectors: torch.Tensor, features: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        x = self.proj(vectors.float())
        if self.proj_feat is not None:
            x = x + self.proj_feat(features.float())
        x = self.drop(nn.functional.gelu(x))
        lengths = lengths.to(x.device)
        if self.kind == "gru":
            x = self._bigru(x, lengths)
        elif self.kind == "sentence":
            t = torch.arange(x.shape[1], device=x.device)[None, :]
            sid = torch.cumsum(features[..., 2].to(x.device) > 0, dim=1) - 1
            sid = torch.where(t < lengths[:, None], sid.clamp(min=0), -1)
            n_sent = sid.max(dim=1).values + 1
            sent = pool_words(x, sid, int(n_sent.max().clamp(min=1)))
            ctx = self._bigru(sent, n_sent.clamp(min=1))
            x = torch.cat(
                [x, ctx.gather(1, sid.clamp(min=0)[..., None].expand(-1, -1, ctx.shape[2]))], -1
            )
        if isinstance(self.mix, nn.Conv1d):
            t = torch.arange(x.shape[1], device=x.device)[None, :, None]
            x = x.masked_fill(t >= lengths[:, None, None], 0.0)
            x = nn.functional.gelu(self.mix(x.transpose(1, 2)).transpose(1, 2))
        else:
            x = self.mix(x)
        return self.out(x)  # type: ignore[no-any-return]

    def _bigru(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        t = torch.arange(x.shape[1], device=x.device)[None, :]
        n = lengths[:, None]
        rev = torch.where(t < n, n - 1 - t, t)[:, :, None]
        for layer in range(0, len(self.rnn), 2):
            fwd, _ = self.rnn[layer](x)
            bwd, _ = self.rnn[layer + 1](x.gather(1, rev.expand_as(x)))
            x = torch.cat([fwd, bwd.gather(1, rev.expand_as(bwd))], dim=-1)
        return x


@dataclass(frozen=True)
class WordInputs:
    """A batch's word-level inputs beside its sub-tokens (the collator's names)."""

    token_word: torch.Tensor
    """(B, T): each sub-token's word within its window, -1 for special and padding tokens."""
    word_features: torch.Tensor
    """(B, W, N_WORD_FEATURES): per word, paragraph and position features."""
    word_count: torch.Tensor
    """(B,): words in each window."""
    labels: torch.Tensor | None = None
    """(B, W): gold labels, -100 where none; with them the loss is computed."""


class NerModel(nn.Module):
    """Encoder + word pooling + head, trained end to end on windows ('finetune' mode)."""

    def __init__(self, encoder: nn.Module, cfg: NerConfig) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = NerHead(hidden_size(encoder), cfg)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_word: torch.Tensor,
        word_features: torch.Tensor,
        word_count: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        inputs = encoder_inputs(self.encoder, input_ids, attention_mask)
        hidden = self.encoder(**inputs).last_hidden_state
        return self.from_hidden(hidden, WordInputs(token_word, word_features, word_count, labels))

    def from_hidden(self, hidden: torch.Tensor, words: WordInputs) -> dict[str, torch.Tensor]:
        """The encoder's (B, T, H) output -> logits per word (and the loss given labels)."""
        features = words.word_features
        pooled = pool_words(hidden.float(), words.token_word, features.shape[1])
        logits = self.head(pooled, features, words.word_count.clamp(min=1))
        out = {"logits": logits}
        if words.labels is not None:
            out["loss"] = nn.functional.cross_entropy(
                logits.reshape(-1, NUM_LABELS),
                words.labels.reshape(-1),
                weight=self.head.label_weights,
                ignore_index=-100,
            )
        return out
