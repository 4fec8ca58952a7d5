"""The web app's door: parse the flags, serve the page built by builder/webapp.py.

    python app.py                                  # http://127.0.0.1:7860
    python app.py --run runs/demo --port 7861      # chat with a trained run first
    BUILDER_APP_PASSWORD=... python app.py --host 0.0.0.0   # off loopback: a login, or --open
"""

import argparse
import sys

from builder.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="한국어 FAQ 챗봇 빌더: the web page")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on")
    parser.add_argument("--run", help="a run folder to chat with first (default: the newest)")
    parser.add_argument("--runs-root", default="runs", help="where data and run folders go")
    parser.add_argument("--config", default="configs/embedded-cpu.yaml",
                        help="training config the page's knobs start from")
    parser.add_argument("--max-upload-mb", type=float, default=20, help="largest FAQ file accepted")
    parser.add_argument("--max-queue", type=int, default=20,
                        help="requests that may wait; more are told to retry")
    parser.add_argument("--open", action="store_true",
                        help="off loopback, serve without a login ($BUILDER_APP_PASSWORD): anyone "
                        "who reaches it can train and chat")
    args = parser.parse_args(argv)

    from builder.webapp import launch

    try:
        launch(args.host, args.port, runs_root=args.runs_root, run_dir=args.run,
               config_path=args.config, max_upload_mb=args.max_upload_mb, open_access=args.open,
               max_queue=args.max_queue)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
