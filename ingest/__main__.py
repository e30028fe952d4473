import sys

from ingest.run import main

if __name__ == "__main__":
    sys.exit(main())
