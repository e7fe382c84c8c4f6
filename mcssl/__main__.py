import sys

from mcssl.cli import main

sys.exit(main())
