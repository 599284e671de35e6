"""Plug-ins written from the README's "Adding a method or a task" only, run through a suite by
``tests/test_plugins.py``: a method with its own tuner (``polyak/``) and a staged task
(``projected_digits.py``)."""
