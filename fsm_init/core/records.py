"""``NamedTuple``, ``Protocol`` and ``Any`` for fsm-init's modules, without importing ``typing``.

``typing`` is the largest single module on PID 1's start-up path (about 4 ms of the
interpreter's time at every container start, docs/benchmark.md), and fsm-init only
wants its class syntax for named tuples, and protocols for the types of the engine's
parts (annotations only, never checked at run time).  For mypy these are typing's own
(the ``TYPE_CHECKING`` branch); at run time ``Protocol`` is a plain base class and
``NamedTuple`` builds the same
``collections.namedtuple`` from the class body: the annotated fields in order, their
defaults, and the docstring, methods and properties of the body.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any as Any
    from typing import NamedTuple as NamedTuple
    from typing import Protocol as Protocol
else:
    import collections

    Any = object
    Protocol = object

    _NOT_COPIED = frozenset({"__module__", "__qualname__", "__annotations__", "__dict__", "__weakref__"})

    class _NamedTupleMeta(type):
        def __new__(mcls, name, bases, namespace):
            if not bases:  # NamedTuple itself
                return super().__new__(mcls, name, bases, namespace)
            annotations = dict(namespace.get("__annotations__", {}))
            fields = list(annotations)
            defaults = [namespace[f] for f in fields if f in namespace]
            if any(f in namespace for f in fields[:len(fields) - len(defaults)]):
                raise TypeError(f"{name}: a field without a default follows one with a default")
            cls = collections.namedtuple(name, fields, defaults=defaults, module=namespace.get("__module__"))
            cls.__annotations__ = annotations
            for key, value in namespace.items():
                if key not in fields and key not in _NOT_COPIED:
                    setattr(cls, key, value)
            cls.__qualname__ = namespace.get("__qualname__", name)
            return cls

    class NamedTuple(metaclass=_NamedTupleMeta):
        """Subclass with annotated fields, as typing.NamedTuple."""
