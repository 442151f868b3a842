"""Class-based actors: subclass ``GenericActor`` and implement ``perform``."""

from __future__ import annotations

from typing import Any

from .actor import Actor, actor

__all__ = ["GenericActor"]


class generic_actor(type):  # noqa: N801 - Dramatiq's name
    """Metaclass that turns each concrete ``GenericActor`` subclass into an actor."""

    def __new__(metacls, name: str, bases: tuple[type, ...], attrs: dict[str, Any]) -> Any:
        clazz = super().__new__(metacls, name, bases, attrs)
        meta: Any = getattr(clazz, "Meta", object)
        if getattr(meta, "abstract", False):
            # The flag belongs to this class only: subclasses that inherit its Meta are concrete.
            meta.abstract = False
            return clazz
        options = {k: v for k, v in vars(meta).items() if not k.startswith("_")}
        options.pop("abstract", None)
        decorator = options.pop("actor", actor)
        options.setdefault("actor_name", name)
        instance = clazz()
        clazz.__actor__ = decorator(instance.perform, **options)  # type: ignore[attr-defined]
        return instance


class GenericActor(metaclass=generic_actor):
    """Base class for class-based actors.

    Options go in an inner ``Meta`` class (``queue_name``, ``max_retries``, ...); ``abstract =
    True`` there marks a base class that is not itself an actor. The class becomes a single
    instance whose ``send``/``send_with_options`` send messages to ``perform``.
    """

    class Meta:
        abstract = True

    __actor__: Actor[Any, Any]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__actor__, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.perform(*args, **kwargs)

    def perform(self, *args: Any, **kwargs: Any) -> Any:
        """Do the work; subclasses override this."""
        raise NotImplementedError(f"{type(self).__name__} must define perform().")
