"""The one exception type for user mistakes.

Anything the user can fix (a bad file, a wrong flag, a missing run folder) raises `UserError`
with a message that names the file, the row and the fix. The CLI and the app show the message
and exit 2 / show it on the page; they never show a traceback for it.
"""


class UserError(Exception):
    """A problem the user can fix; the message says what was found and what to do."""
