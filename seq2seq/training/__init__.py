"""The training layer, on Lightning: data pipeline, the LightningModule, `seq2seq train`, bench.

It builds on the inference core (seq2seq.core); nothing in the core imports it.
"""
