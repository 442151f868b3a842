"""nbqueue in Jupyter: ``%load_ext nbqueue``, the ``%%actor``/``%send``/``%nbqueue`` magics, the
kernel's embedded worker and the live widgets.

Needs the notebook extra: ``pip install 'nbqueue[notebook]'``.
"""

from __future__ import annotations
