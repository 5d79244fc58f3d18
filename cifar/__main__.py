import sys

try:
    from cifar.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python is still importing: no traceback either
    print("interrupted; nothing was changed", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())
