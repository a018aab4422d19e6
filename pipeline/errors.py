"""The one exception type that reaches a user as a single line."""
import sys


class UserError(Exception):
    """Bad input: the message says what is wrong and what to do.

    The CLI prints it as one line and exits non-zero, without a traceback.
    """


def user_errors() -> tuple[type[Exception], ...]:
    """Every exception type whose message is written for the user: ours and the label store's. The store's type is
    read only where the store is loaded (importing it loads torch and h5py), since only then can one be raised."""
    store_schema = sys.modules.get(f"{__name__.rsplit('.', 2)[0]}.store.schema")
    return (UserError,) if store_schema is None else (UserError, store_schema.StoreError)
