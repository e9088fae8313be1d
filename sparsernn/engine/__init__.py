"""Inference on the sparse kernels.

- :func:`sparsify` turns any model's ``nn.RNN``/``nn.GRU``/``nn.LSTM``, their cells and ``nn.Linear``
  into drop-in modules that run on the kernels (``modules.py``); :func:`load_sparse` builds the same from
  a file written by :func:`sparsernn.export.save_sparse`.
- With ``example_inputs``, :func:`sparsify` captures the whole forward as one program (``lower.py``)
  run by :class:`ProgramEngine` / :class:`SparseProgram` (``program.py``), a streamed step in one call.
- :class:`RecurrentStack` runs recurrent layers over whole sequences (``stack.py``).
- :class:`LanguageModelEngine`, :class:`SpeechEngine` and :class:`TranslationEngine` run exported models
  of the built-in families (``families.py``).
"""

from sparsernn.engine.families import LanguageModelEngine, SpeechEngine, TranslationEngine
from sparsernn.engine.lower import LoweringError, lower
from sparsernn.engine.modules import SparseLinear, SparseRNN, SparseRNNCell, load_sparse, sparsify
from sparsernn.engine.program import ProgramEngine, SparseProgram
from sparsernn.engine.stack import DENSE_ENOUGH, Direction, RecurrentStack, as_kernel_matrix

__all__ = ["DENSE_ENOUGH", "Direction", "LanguageModelEngine", "LoweringError", "ProgramEngine",
           "RecurrentStack", "SparseLinear", "SparseProgram", "SparseRNN", "SparseRNNCell", "SpeechEngine",
           "TranslationEngine", "as_kernel_matrix", "load_sparse", "lower", "sparsify"]
