"""Check: the AN4 WAVs read through soundfile give the same samples and features as the scipy reader did.

    python scripts/check_wav_reader.py ../shared/data/an4
"""

import sys
from pathlib import Path

import numpy as np
import scipy.io.wavfile

from sparsernn.config import SpeechDataConfig
from sparsernn.data import speech


def main(root: Path) -> None:
    config = SpeechDataConfig(kind="an4", path=root)
    files = sorted((root / "wav").rglob("*.wav"))
    samples_equal = features_equal = 0
    for file in files:
        rate, ints = scipy.io.wavfile.read(file)
        if ints.dtype != np.int16:
            continue
        old = ints.astype(np.float32) / 32768.0  # what the scipy-based reader returned for 16-bit PCM
        new, new_rate = speech.read_audio(file)
        if new_rate == rate and np.array_equal(old, new):
            samples_equal += 1
            features_equal += np.array_equal(speech.features(speech.resample(old, rate, 16000), config),
                                             speech.features(speech.resample(new, rate, 16000), config))
    print(f"{len(files)} AN4 WAV files: samples identical {samples_equal}, "
          f"features identical {features_equal}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
