"""The one exception type for a user's mistake: the CLI prints its message and exits with 2."""


class UserError(ValueError):
    """Bad input from the user (config, data, checkpoint); the message names the file or key."""
