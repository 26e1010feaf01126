import sys

from relaygate.cli.main import main

sys.exit(main())
