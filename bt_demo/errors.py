"""The one exception type user-facing code raises for bad input."""


class InputError(ValueError):
    """A problem with what the user gave us, phrased for a clinician.

    The message is shown verbatim in the UI, so it says what is wrong and what
    to do next, never a Python traceback.
    """
