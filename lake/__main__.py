"""`python -m lake demo`: the whole system on the built-in synthetic corpus."""

import sys


def _main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("demo",):
        print("usage: python -m lake demo [--out DIR] [--help]\n\nruns the whole system on a synthetic corpus "
              "(see `python -m lake demo --help`)", file=sys.stderr)
        return 2
    from lake.demo import main  # here, not at the top: the usage line must not wait for torch and every stage (~5 s)

    return main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(_main())
