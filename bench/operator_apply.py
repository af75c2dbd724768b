from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse._ArgumentGroup) -> None:
    pass


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    return {}
