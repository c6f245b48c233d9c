"""Typed application keys for what every route module shares (aiohttp ``AppKey``)."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.orm import Session, sessionmaker

from forage.config import Config
from storage.blockstore import Blockstore

CONFIG = web.AppKey("config", Config)
SESSIONMAKER = web.AppKey("sessionmaker", sessionmaker[Session])
BLOCKSTORE = web.AppKey("blockstore", Blockstore)
