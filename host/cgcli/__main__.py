import sys

from cgcli import main

sys.exit(main())
