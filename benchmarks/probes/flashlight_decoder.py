"""Our prefix beam search with a word n-gram LM fused (``sparsernn.train.metrics``) against flashlight-text's
lexicon decoder with KenLM reading the same ARPA file, on a trained speech model's test split: WER and CER
at the same beam widths and weights, and the decoding seconds per second of audio (the network excluded).

    pip install flashlight-text
    python benchmarks/probes/flashlight_decoder.py RUN/checkpoints/best.pt --lm LM.arpa \\
        --alpha 0.75 --beta 2 --beams 16 64

The two searches score a transcript alike: log P_ctc + alpha log P_lm + beta words, with alpha in
natural logs (KenLM's scores are log10, so flashlight's LM weight is alpha * ln 10), alignments of one
transcript summed (flashlight's ``log_add``). They differ where a lexicon decoder must: flashlight's
emits the LM's words only (no unknown words), spelled in the model's characters and each closed by a
space; the utterance is given one extra frame of certain space at its end so that its last word closes
(the model emits none there). Ours is open-vocabulary and applies the LM to each word as it ends.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from sparsernn import ngram
from sparsernn.ngram import NgramLM
from sparsernn.train.evaluate import load_trained
from sparsernn.train.metrics import LMFusion, error_rates
from sparsernn.train.recognize import frames_of, load_split, search_rates


def flashlight_search(frames, vocabulary, lm_path: str, words: list[str], beam: int, alpha: float,
                      beta: float) -> tuple[list[str], float]:
    """Transcripts by flashlight's lexicon decoder, and the seconds the searches took."""
    from flashlight.lib.text.decoder import (
        CriterionType,
        KenLM,
        LexiconDecoder,
        LexiconDecoderOptions,
        SmearingMode,
        Trie,
    )
    from flashlight.lib.text.dictionary import Dictionary

    word_dict = Dictionary([*words, ngram.UNK])
    lm = KenLM(lm_path, word_dict)
    space, blank = vocabulary.index(" "), 0
    trie = Trie(len(vocabulary), space)
    start = lm.start(False)
    for index, word in enumerate(words):
        trie.insert([vocabulary.index(c) for c in word] + [space], index, lm.score(start, index)[1])
    trie.smear(SmearingMode.MAX)
    options = LexiconDecoderOptions(beam_size=beam, beam_size_token=len(vocabulary), beam_threshold=25.0,
                                    lm_weight=alpha * math.log(10), word_score=beta, unk_score=-math.inf,
                                    sil_score=0.0, log_add=True, criterion_type=CriterionType.CTC)
    decoder = LexiconDecoder(options, trie, lm, space, blank, word_dict.get_index(ngram.UNK), [], False)
    closing = np.full((1, len(vocabulary)), -1e9, np.float32)
    closing[0, space] = 0.0  # one frame of certain space: the last word closes
    emissions = [np.ascontiguousarray(np.concatenate([f.numpy(), closing]), dtype=np.float32) for f in frames]
    started, texts = time.perf_counter(), []
    for e in emissions:
        best = decoder.decode(e.ctypes.data, e.shape[0], e.shape[1])[0]
        texts.append(" ".join(word_dict.get_entry(i) for i in best.words if i >= 0))
    return texts, time.perf_counter() - started


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--lm", required=True, help="an ARPA file")
    parser.add_argument("--alpha", type=float, default=0.75)
    parser.add_argument("--beta", type=float, default=2.0)
    parser.add_argument("--beams", type=int, nargs="+", default=[16, 64])
    args = parser.parse_args(argv)
    model, config, vocabulary, _ = load_trained(args.checkpoint, speech=True)
    data = load_split(config, model, "test")
    frames = frames_of(model, data, config.data.eval_batch_size)
    audio = data.seconds(config.data.hop_ms)
    lm = NgramLM.load(args.lm)
    words = sorted(w for w in lm.words if w not in (ngram.BOS, ngram.EOS, ngram.UNK))
    print(f"{len(data)} test utterances, {audio:.0f} s of audio; LM {args.lm} ({len(words)} words); "
          f"alpha {args.alpha}, beta {args.beta}\n")
    print("| decoder | beam | WER | CER | decoding s per s of audio |\n|---|---|---|---|---|")
    for beam in args.beams:
        ours = search_rates(frames, data, vocabulary, {"ours": (beam, LMFusion(lm, args.alpha, args.beta))},
                            config.data.hop_ms)
        texts, seconds = flashlight_search(frames, vocabulary, args.lm, words, beam, args.alpha, args.beta)
        theirs = error_rates(data.texts, texts)
        print(f"| sparsernn prefix beam + LM | {beam} | {ours['wer_ours']:.1%} | {ours['cer_ours']:.1%} | "
              f"{ours['rtf_ours']:.4f} |")
        print(f"| flashlight lexicon decoder + KenLM | {beam} | {theirs['wer']:.1%} | {theirs['cer']:.1%} | "
              f"{seconds / audio:.4f} |")


if __name__ == "__main__":
    main()
