"""The one exception type that reaches a user as a single line."""


class UserError(Exception):
    """Bad input: the message says what is wrong and what to do.

    The CLI prints it as one line and exits non-zero, without a traceback.
    """


def user_errors() -> tuple[type[Exception], ...]:
    """Every exception type whose message is written for the user: ours and the label store's."""
    from ..store import StoreError

    return (UserError, StoreError)
