"""``python -m nbqueue.django ARGS``: nbqueue's worker CLI with ``dramatiq`` aliased to nbqueue.

``manage.py rundramatiq`` runs this. The alias is installed before any module named on the
command line (``django_dramatiq.setup`` first) imports ``dramatiq``; worker processes started
with ``spawn`` get it when that module runs ``django.setup()``, which sets up this app first.
"""

from __future__ import annotations

import sys

from ..cli import main
from ..compat import install_as_dramatiq

if __name__ == "__main__":
    install_as_dramatiq()
    sys.exit(main())
