"""`edgewise`: parse the command line, run the command, and turn every failure into one line and an exit code:
2 for a user's mistake or the machine's (a full disk), 130 for an interrupt, 1 for a bug (traceback with
--log_level 0)."""
from __future__ import annotations

import errno
import sys

_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG}


def main(argv=None) -> int:
    from edgewise.cli.parser import build_parser
    from edgewise.core.errors import EdgewiseError
    from edgewise.core.log import setup

    args = build_parser().parse_args(argv)
    setup(args.log_level)
    try:
        from edgewise.cli import commands

        return getattr(commands, args.command.replace("-", "_"))(args) or 0
    except EdgewiseError as exc:
        print(f"edgewise: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgewise: interrupted (finished steps stay cached; run again to resume)", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS:  # a full disk or a read-only folder is the machine's, not a bug
            return _internal_error(args, exc)
        print(f"edgewise: error: {exc.strerror}" + (f": {exc.filename}" if exc.filename else ""), file=sys.stderr)
        return 2
    except Exception as exc:
        return _internal_error(args, exc)


def _internal_error(args, exc: Exception) -> int:
    """The last line of defence: one line, non-zero, the traceback only when asked for."""
    from edgewise.core.log import log

    if args.log_level == 0:
        raise exc
    log.debug("internal error", exc_info=True)
    print(f"edgewise: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
          "(rerun with --log_level 0 for the traceback)", file=sys.stderr)
    return 1
