import sys

from ingest.synthetic.corpus import main

sys.exit(main())
