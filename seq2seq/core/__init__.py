"""The inference core: the network, search, checkpoints, translation and scoring.

It imports torch, sentencepiece and sacrebleu only, never Lightning, so translating and
serving start fast and need none of the training stack (tests/test_imports.py pins it).
"""
