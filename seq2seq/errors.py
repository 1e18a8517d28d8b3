"""The one exception type for problems a user can cause and fix."""


class Seq2SeqError(Exception):
    """A user-facing error: the message names the problem and how to fix it.

    The CLI turns it into a one-line message and a non-zero exit; library users catch it.
    """
