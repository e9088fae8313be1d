"""Translation: embedding -> bidirectional GRU/LSTM encoder -> attention -> GRU/LSTM decoder with input
feeding -> output layer (optionally tied to the target embedding); greedy and beam-search decoding.

The decoder follows Luong et al. 2015: at step t its recurrent layer reads the previous target word and
the previous attentional vector (input feeding), its output h_t queries the encoder states, and the
attentional vector ``tanh(W_c [h_t; context_t])`` predicts the word. The score is additive,
``v^T tanh(W_q h_t + W_k m_s)`` (``attention: bahdanau``, Bahdanau et al. 2015), or general bilinear,
``h_t^T W_k m_s`` (``luong``). Every matrix is an ``nn.GRU``/``nn.LSTM``/``nn.Linear`` weight, so the
Pruner finds them all and ``sparsernn.sparsify`` runs the whole model on the sparse kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from sparsernn.config import Seq2SeqConfig
from sparsernn.data.translation import BOS, EOS, PAD

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


@dataclass
class Encoded:
    memory: torch.Tensor  # (B, S, H) encoder states
    keys: torch.Tensor  # (B, S, H) their projection for the attention scores
    mask: torch.Tensor  # (B, S) True at real (not padding) positions

    def select(self, rows: torch.Tensor) -> Encoded:
        return Encoded(self.memory[rows], self.keys[rows], self.mask[rows])


def _select_state(state: State, rows: torch.Tensor) -> State:
    if isinstance(state, tuple):
        return tuple(s[:, rows] for s in state)
    return state[:, rows]


class Seq2Seq(nn.Module):
    def __init__(self, vocab_size: int, config: Seq2SeqConfig):
        super().__init__()
        self.config = config
        embedding, hidden = config.embedding_size, config.hidden_size
        recurrent = {"gru": nn.GRU, "lstm": nn.LSTM}[config.cell]
        self.dropout = nn.Dropout(config.dropout)
        self.source_embedding = nn.Embedding(vocab_size, embedding, padding_idx=PAD)
        self.target_embedding = nn.Embedding(vocab_size, embedding, padding_idx=PAD)
        self.encoder = recurrent(embedding, hidden // 2, num_layers=config.layers, batch_first=True,
                                 bidirectional=True, dropout=config.dropout if config.layers > 1 else 0.0)
        self.bridge = nn.Linear(hidden, hidden * config.decoder_layers)  # encoder's last -> decoder's first
        self.decoder = recurrent(embedding + hidden, hidden, num_layers=config.decoder_layers,
                                 batch_first=True,
                                 dropout=config.dropout if config.decoder_layers > 1 else 0.0)
        self.attention_key = nn.Linear(hidden, hidden, bias=False)
        if config.attention == "bahdanau":
            self.attention_query = nn.Linear(hidden, hidden)
            self.attention_score = nn.Linear(hidden, 1, bias=False)
        self.combine = nn.Linear(2 * hidden, hidden)
        self.output = nn.Linear(hidden, vocab_size)
        if config.tie_weights:  # Press & Wolf 2017
            self.output.weight = self.target_embedding.weight

    # -- the two halves ----------------------------------------------------------------------------

    def encode(self, source: torch.Tensor, lengths: torch.Tensor) -> tuple[Encoded, State, torch.Tensor]:
        """Source ids (B, S) -> encoder states, the decoder's first state and first attentional vector."""
        batch, steps = source.shape
        embedded = self.dropout(self.source_embedding(source))  # (B, S, E)
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        outputs, final = self.encoder(packed)
        memory, _ = pad_packed_sequence(outputs, batch_first=True, total_length=steps)  # (B, S, H)
        h_n = final[0] if isinstance(final, tuple) else final  # (layers * 2, B, H / 2)
        last = torch.cat([h_n[-2], h_n[-1]], dim=-1)  # the top layer, both directions: (B, H)
        first = torch.tanh(self.bridge(last)).view(batch, self.config.decoder_layers, -1).transpose(0, 1)
        first = first.contiguous()  # (decoder layers, B, H)
        state = (first, torch.zeros_like(first)) if self.config.cell == "lstm" else first
        mask = torch.arange(steps, device=source.device)[None] < lengths.to(source.device)[:, None]
        feed = memory.new_zeros(batch, self.config.hidden_size)
        return Encoded(memory, self.attention_key(memory), mask), state, feed

    def decode_step(self, words: torch.Tensor, state: State, feed: torch.Tensor,
                    encoded: Encoded) -> tuple[torch.Tensor, State, torch.Tensor]:
        """One target step: previous words (B,) -> logits (B, V), the new state and attentional vector."""
        embedded = self.dropout(self.target_embedding(words))
        inputs = torch.cat([embedded, feed], dim=-1)[:, None]  # (B, 1, E + H)
        output, state = self.decoder(inputs, state)
        query = output[:, 0]  # (B, H)
        if self.config.attention == "bahdanau":
            added = torch.tanh(encoded.keys + self.attention_query(query)[:, None])  # (B, S, H)
            scores = self.attention_score(added)[..., 0]
        else:
            scores = torch.bmm(encoded.keys, query[:, :, None])[..., 0]  # (B, S)
        weights = torch.softmax(scores.masked_fill(~encoded.mask, float("-inf")), dim=-1)
        context = torch.bmm(weights[:, None], encoded.memory)[:, 0]  # (B, H)
        feed = torch.tanh(self.combine(torch.cat([query, context], dim=-1)))
        return self.output(self.dropout(feed)), state, feed

    def forward(self, source: torch.Tensor, lengths: torch.Tensor, target_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: logits (B, T, V) for every target position."""
        encoded, state, feed = self.encode(source, lengths)
        logits = []
        for t in range(target_in.shape[1]):
            step, state, feed = self.decode_step(target_in[:, t], state, feed, encoded)
            logits.append(step)
        return torch.stack(logits, dim=1)

    # -- decoding ----------------------------------------------------------------------------------

    @torch.no_grad()
    def greedy(self, source: torch.Tensor, lengths: torch.Tensor, max_length: int) -> list[list[int]]:
        """The most likely word at each step, for a batch; each output stops at its end of sentence."""
        encoded, state, feed = self.encode(source, lengths)
        words = torch.full((source.shape[0],), BOS, dtype=torch.long, device=source.device)
        outputs, done = [], torch.zeros_like(words, dtype=torch.bool)
        for _ in range(max_length):
            logits, state, feed = self.decode_step(words, state, feed, encoded)
            words = logits.argmax(-1)
            outputs.append(words)
            done |= words == EOS
            if bool(done.all()):
                break
        return [_until_end(row) for row in torch.stack(outputs, dim=1).tolist()]

    @torch.no_grad()
    def beam_search(self, source: torch.Tensor, length: int, beam: int, max_length: int,
                    length_penalty: float = 1.0) -> list[int]:
        """One sentence (S,): the hypothesis with the best ``log P / length ** length_penalty`` among
        ``beam`` kept per step (finished ones are set aside; the search ends when ``beam`` have finished,
        or when no live hypothesis can still beat the best finished one)."""
        encoded, state, feed = self.encode(source[None], torch.tensor([length]))
        live = [[]]  # word lists of the live hypotheses
        scores = source.new_zeros(1, dtype=torch.float)
        finished: list[tuple[float, list[int]]] = []
        words = torch.tensor([BOS], device=source.device)
        copies = {}  # the encoder states once per hypothesis, by the number of hypotheses
        for step in range(1, max_length + 1):
            if len(live) not in copies:
                copies[len(live)] = encoded.select(torch.zeros(len(live), dtype=torch.long))
            logits, state, feed = self.decode_step(words, state, feed, copies[len(live)])
            candidates = (scores[:, None] + torch.log_softmax(logits, dim=-1)).flatten()
            top = candidates.topk(min(beam, candidates.numel()))
            vocab = logits.shape[-1]
            keep, next_live, next_scores = [], [], []
            for score, index in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                origin, word = divmod(index, vocab)
                if word == EOS:
                    finished.append((score / step ** length_penalty, live[origin]))
                else:
                    keep.append(origin)
                    next_live.append(live[origin] + [word])
                    next_scores.append(score)
            best_finished = max((s for s, _ in finished), default=float("-inf"))
            # A live hypothesis only loses probability; its best normalized score is bounded by now.
            hopeless = all(s / max_length ** length_penalty < best_finished if length_penalty > 0
                           else s < best_finished for s in next_scores)
            if len(finished) >= beam or not next_live or hopeless:
                break
            index = torch.tensor(keep)
            state, feed = _select_state(state, index), feed[index]
            live, scores = next_live, torch.tensor(next_scores)
            words = torch.tensor([w[-1] for w in live])
        if not finished:  # nothing ended within max_length: the best live hypothesis
            finished = [(s / max_length ** length_penalty, w)
                        for s, w in zip(next_scores, next_live, strict=True)]
        return max(finished, key=lambda pair: pair[0])[1]


def _until_end(words: list[int]) -> list[int]:
    return words[:words.index(EOS)] if EOS in words else words
