from __future__ import annotations

from typing import Any

import nbqueue
from nbqueue import GenericActor


def test_generic_actors_become_actors_with_options_from_meta(stub_broker, stub_worker):
    done = []

    class BaseTask(GenericActor):
        class Meta:
            abstract = True
            queue_name = "generic"

        def perform(self, x):
            done.append(self.transform(x))

        def transform(self, x):
            raise NotImplementedError

    class Doubler(BaseTask):
        class Meta:
            queue_name = "generic"
            max_retries = 0

        def transform(self, x):
            return 2 * x

    doubler: Any = Doubler  # the class statement produced the actor's instance

    assert doubler.actor_name == "Doubler"
    assert doubler.options == {"max_retries": 0}
    assert "BaseTask" not in stub_broker.get_declared_actors()
    assert doubler(3) is None and done == [6]
    doubler.send(5)
    stub_broker.join("generic", timeout=10000)
    stub_worker.join()
    assert done == [6, 10]
    assert isinstance(doubler.__actor__, nbqueue.Actor)
