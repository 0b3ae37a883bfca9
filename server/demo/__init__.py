"""The built-in demo page (``GET /demo``): drop a photo, follow the job, turn the model around.

The page and its script are ours (``static/``); the 3D viewer is ``@google/model-viewer``
from npm (``package.json`` + ``package-lock.json`` here), installed by ``make install``
into ``node_modules/`` and served from there. Without it the page still works and says
how to enable the viewer.
"""

from server.demo.page import DEMO_ROUTES, DemoAssets

__all__ = ["DEMO_ROUTES", "DemoAssets"]
