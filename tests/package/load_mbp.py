"""Loads a built .mbp with maubot's own zip loader, in a clean process, and reports as JSON.

Run from a directory without the source tree, so that only the archive can satisfy imports.
"""

from __future__ import annotations

import asyncio
import json
import sys

from maubot.loader import ZippedPluginLoader
from maubot.plugin_base import Plugin
from mautrix.util.config import RecursiveDict
from ruamel.yaml import YAML


async def main(path: str) -> dict:
    loader = ZippedPluginLoader.get(path)
    cls = await loader.load()
    base = RecursiveDict(YAML().load(loader.sync_read_file("base-config.yaml")))
    config = cls.get_config_class()(lambda: {}, lambda: base.clone(), lambda _: None)
    config.load_and_update()
    return {
        "id": loader.meta.id,
        "version": str(loader.meta.version),
        "main_class": cls.__name__,
        "is_plugin": issubclass(cls, Plugin),
        "module_file": sys.modules[cls.__module__].__file__,
        "files": [f.filename for f in loader._file.filelist],
        "config": config._data,
        "base": base._data,
        "upgrade_versions": len(cls.get_db_upgrade_table().upgrades),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1])), default=str))
