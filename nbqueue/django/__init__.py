"""django-dramatiq on nbqueue: list ``"nbqueue.django"`` first in ``INSTALLED_APPS``.

django-dramatiq (``django_dramatiq``) configures the broker from ``settings.DRAMATIQ_BROKER``,
records tasks in its ``Task`` model (``AdminMiddleware``) and starts workers with
``manage.py rundramatiq``. Listed before ``django_dramatiq``, this app

- calls ``nbqueue.install_as_dramatiq()`` when Django sets it up, which is before Django imports
  ``django_dramatiq`` (apps are imported and their configs made one by one, in the order of
  ``INSTALLED_APPS``), so django-dramatiq and the ``dramatiq.*`` paths in your settings use
  nbqueue;
- replaces ``rundramatiq`` (Django takes a command from the first app that has it) with one
  that takes the same options and runs nbqueue's worker CLI instead of the ``dramatiq`` program.

``django.setup()`` raises ``DramatiqAlreadyImported`` when the real ``dramatiq`` is already
imported (this app is listed after ``django_dramatiq``, or something imported ``dramatiq``
earlier). Importing this package or its modules changes nothing.
"""
