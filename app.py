"""The web app's door: `python app.py [FLAGS]` is `builder app [FLAGS]`, through the same parser
(builder/doors/cli.py), so the two never drift apart.

    python app.py                                  # http://127.0.0.1:7860
    python app.py --run runs/demo --port 7861      # chat with a trained run first
    BUILDER_APP_PASSWORD=... python app.py --host 0.0.0.0   # off loopback: a login, or --open
"""

import sys

from builder.doors.cli import main as builder_main


def main(argv: list[str] | None = None) -> int:
    return builder_main(["app", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
