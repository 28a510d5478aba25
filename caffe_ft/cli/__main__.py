import sys

from caffe_ft.cli import main

sys.exit(main())
