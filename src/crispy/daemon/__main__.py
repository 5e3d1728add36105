import sys

from crispy.daemon.main import main

sys.exit(main())
