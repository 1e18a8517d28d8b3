"""seq2seq: GRU encoder + attention GRU decoder translation, trained with Lightning."""

from seq2seq.errors import Seq2SeqError

__all__ = ["Seq2SeqError"]
__version__ = "0.1.0"
