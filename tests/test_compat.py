"""``nbqueue.install_as_dramatiq()``, each case in a fresh interpreter (the real Dramatiq is
installed in the test environment and must not be imported first)."""

from __future__ import annotations

from tests.ecosystem._run import run_python


def test_dramatiq_names_resolve_to_the_same_nbqueue_modules():
    result = run_python(
        """
        import sys
        import nbqueue
        nbqueue.install_as_dramatiq()

        import dramatiq
        import dramatiq.brokers.redis
        import dramatiq.results.backends
        from dramatiq.middleware import Middleware
        from dramatiq.brokers.stub import StubBroker
        import nbqueue.brokers.redis
        import nbqueue.results.backends

        assert dramatiq is nbqueue
        assert dramatiq.brokers.redis is nbqueue.brokers.redis
        assert sys.modules["dramatiq.brokers.redis"] is nbqueue.brokers.redis
        assert dramatiq.results.backends is nbqueue.results.backends
        assert Middleware is nbqueue.Middleware
        broker = StubBroker()
        assert isinstance(broker, nbqueue.Broker)
        # nbqueue's modules keep their own spec
        assert nbqueue.brokers.redis.__spec__.name == "nbqueue.brokers.redis"
        assert "site-packages/dramatiq" not in (dramatiq.__file__ or "")
        print(dramatiq.__version__ == nbqueue.__version__)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True"]


def test_installing_twice_changes_nothing():
    result = run_python(
        """
        import sys
        import nbqueue
        nbqueue.install_as_dramatiq()
        import dramatiq
        finders = len(sys.meta_path)
        nbqueue.install_as_dramatiq()
        assert len(sys.meta_path) == finders
        import dramatiq.actor
        print(dramatiq.actor is nbqueue.actor)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True"]


def test_it_refuses_when_the_real_dramatiq_is_already_imported():
    result = run_python(
        """
        import sys
        import dramatiq
        import nbqueue
        from nbqueue.errors import DramatiqAlreadyImported, NbqueueError
        finders = list(sys.meta_path)
        try:
            nbqueue.install_as_dramatiq()
        except DramatiqAlreadyImported as e:
            assert isinstance(e, NbqueueError)
            assert "dramatiq" in e.modules
            assert sys.meta_path == finders
            assert sys.modules["dramatiq"] is not nbqueue
            print(str(e))
        """
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert "before anything imports dramatiq" in lines[0]


def test_a_dramatiq_module_nbqueue_lacks_is_a_clear_import_error():
    result = run_python(
        """
        import nbqueue
        nbqueue.install_as_dramatiq()
        try:
            import dramatiq.canteen
        except ImportError as e:
            assert isinstance(e, ModuleNotFoundError)
            print(e.name)
            print(e)
        """
    )
    assert result.returncode == 0, result.stderr
    name, text = result.stdout.splitlines()
    assert name == "dramatiq.canteen"
    assert "nbqueue does not provide" in text and "'nbqueue.canteen'" in text


def test_without_it_dramatiq_is_the_real_package():
    """The control: the test environment has the real Dramatiq, which the alias shadows."""
    result = run_python("import dramatiq, nbqueue; print(dramatiq is nbqueue)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False"]
