"""The Django application of ``nbqueue.django``."""

from __future__ import annotations

from types import ModuleType

from django.apps import AppConfig

from ..compat import install_as_dramatiq


class NbqueueDjangoConfig(AppConfig):
    """Installs the ``dramatiq`` alias as Django registers the app; it has no models.

    Raises:
      DramatiqAlreadyImported: the real ``dramatiq`` is already imported.
    """

    name = "nbqueue.django"
    label = "nbqueue_django"
    verbose_name = "nbqueue for django-dramatiq"

    def __init__(self, app_name: str, app_module: ModuleType | None) -> None:
        # Django makes each app's config before it imports the next app of INSTALLED_APPS, so
        # listed first, this runs before django_dramatiq imports dramatiq.
        install_as_dramatiq()
        super().__init__(app_name, app_module)
