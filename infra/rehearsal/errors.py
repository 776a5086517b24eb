"""The one error type the CLI turns into a single line on stderr and a non-zero exit."""


class RehearsalError(Exception):
    """A failure the user can act on; its message is printed as one line, without a traceback."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        # Keep the message on one line whatever a tool printed: the contract is one line.
        super().__init__(" ".join(message.split()))
        self.exit_code = exit_code
