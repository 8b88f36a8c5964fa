import sys

from ipfailover.failoverd import main

sys.exit(main())
