"""Forage's HTTP server: the lookup API, the trustless gateway, web pages and the mirror.

:func:`forage.server.app.make_app` builds one aiohttp application; each feature is a module
listed in ``ROUTE_MODULES`` with a ``setup(app)`` function adding its routes. Shared
resources are read from the application through the keys in :mod:`forage.server.state`.
"""
